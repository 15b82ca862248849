"""Projectors (mmproj files) belong to their models and are not models: found by name beside a
model, in a model's own folder, by their GGUF header, or named by a model's `mmproj` setting;
what each model takes (`input_modalities`) in /v1/models, the models table, `manage.py models`
and the admin; and the tiny projector the tests use, loaded by llama.cpp's multimodal library."""

from __future__ import annotations

import ctypes
import io
import json
import os
from pathlib import Path

import jsonschema
import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.test import AsyncClient, Client

from inference.config import ConfigError, load_config
from inference.management.commands import models as models_command
from inference.models import DiscoveredModel
from inference.runtime import catalog, projectors
from inference.runtime.catalog import Catalog, scan
from inference.runtime.gguf_header import read_gguf_info
from inference.runtime.pool import model_pool
from inference.services import models as model_services
from tests.conftest import SMOLLM2, link_model
from tests.fake_engine import pool_config
from tests.gguf_files import write_projector, write_synthetic

ADMIN_TOKEN = "vision-discovery-admin-token"


@pytest.fixture(scope="session")
def projector_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight projector for SmolLM2, written once."""
    return write_projector(tmp_path_factory.mktemp("projector") / "projector.gguf")


def place(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, target)
    return target


def model(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_synthetic(path, context_length=1024)


def notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == catalog.__name__]


# --- which file is whose ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_file", "projector_name"),
    [
        ("gemma.gguf", "gemma.mmproj.gguf"),
        ("gemma.gguf", "mmproj-gemma.gguf"),
        ("gemma/gemma.gguf", "gemma/mmproj-F16.gguf"),  # a model's own folder: any mmproj*
        ("gemma-it/gemma.gguf", "gemma-it/vision-encoder.gguf"),  # ... or any projector by its header
        ("gemma-00001-of-00002.gguf", "mmproj-gemma.gguf"),  # a split model's name
    ],
)
def test_a_projector_belongs_to_its_model_and_is_not_listed(
    tmp_path: Path, projector_file: Path, model_file: str, projector_name: str
) -> None:
    model(tmp_path / model_file)
    model(tmp_path / "plain.gguf")
    projector = place(projector_file, tmp_path / projector_name)
    models = scan(tmp_path).models
    assert list(models) == ["gemma", "plain"]
    assert models["gemma"].path == tmp_path / model_file
    assert models["gemma"].projector == projector
    assert models["gemma"].input_modalities == ["text", "image"]
    assert (models["plain"].projector, models["plain"].input_modalities) == (None, ["text"])


def test_beside_a_model_the_dotted_name_wins_and_others_belong_to_no_model(
    tmp_path: Path, projector_file: Path
) -> None:
    model(tmp_path / "gemma.gguf")
    place(projector_file, tmp_path / "mmproj-gemma.gguf")
    dotted = place(projector_file, tmp_path / "gemma.mmproj.gguf")
    place(projector_file, tmp_path / "mmproj-F16.gguf")  # in the shared directory: names no model
    place(projector_file, tmp_path / ".mmproj.gguf")  # hidden: not even that
    found = scan(tmp_path)
    assert list(found.models) == ["gemma"] and found.models["gemma"].projector == dotted
    unowned = projectors.unowned_note(tmp_path / "mmproj-F16.gguf")
    assert set(found.notes) == {f"not using {tmp_path / 'mmproj-gemma.gguf'}: gemma has gemma.mmproj.gguf", unowned}
    assert "is a projector (mmproj) of no model here" in unowned


def test_a_clip_file_alone_is_not_a_model_and_is_logged_once(
    tmp_path: Path, projector_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    place(projector_file, tmp_path / "vision.gguf")
    model(tmp_path / "plain.gguf")
    assert read_gguf_info(tmp_path / "vision.gguf").projector
    models_catalog = Catalog(pool_config(tmp_path))
    assert list(models_catalog.available()) == ["plain"]
    model(tmp_path / "other.gguf")  # the directory changed: scanned again
    assert list(models_catalog.available()) == ["other", "plain"]
    [line] = notes(caplog)
    assert line.startswith(f"{tmp_path / 'vision.gguf'} is a projector (mmproj) of no model here")


def test_a_folder_is_a_models_own_only_when_it_holds_one_model(tmp_path: Path, projector_file: Path) -> None:
    model(tmp_path / "pair" / "a.gguf")
    model(tmp_path / "pair" / "b.gguf")
    place(projector_file, tmp_path / "pair" / "mmproj-a.gguf")
    model(tmp_path / "one" / "deeper" / "c.gguf")
    place(projector_file, tmp_path / "only-projectors" / "mmproj-x.gguf")
    (tmp_path / ".hidden").mkdir()
    model(tmp_path / ".hidden" / "d.gguf")
    assert scan(tmp_path).models == {}


def test_several_projectors_in_a_folder_the_first_by_name_is_used_and_logged(
    tmp_path: Path, projector_file: Path
) -> None:
    model(tmp_path / "gemma" / "gemma-Q4_K_M.gguf")
    first = place(projector_file, tmp_path / "gemma" / "mmproj-BF16.gguf")
    place(projector_file, tmp_path / "gemma" / "mmproj-F16.gguf")
    place(projector_file, tmp_path / "gemma" / "mmproj-F32.gguf")
    found = scan(tmp_path)
    assert found.models["gemma-Q4_K_M"].projector == first
    [note] = found.notes
    assert (
        "holds several projectors (mmproj-BF16.gguf, mmproj-F16.gguf, mmproj-F32.gguf): using mmproj-BF16.gguf" in note
    )
    assert "model_manager.models.gemma-Q4_K_M.mmproj" in note


def test_in_a_models_folder_projectors_named_for_it_win_the_dotted_name_first(
    tmp_path: Path, projector_file: Path
) -> None:
    model(tmp_path / "gemma" / "gemma.gguf")
    place(projector_file, tmp_path / "gemma" / "mmproj-F16.gguf")
    place(projector_file, tmp_path / "gemma" / "mmproj-gemma.gguf")
    dotted = place(projector_file, tmp_path / "gemma" / "gemma.mmproj.gguf")
    found = scan(tmp_path)
    assert (found.models["gemma"].projector, found.notes) == (dotted, ())


def test_a_model_in_the_directory_wins_over_one_of_the_same_name_in_a_folder(tmp_path: Path) -> None:
    model(tmp_path / "gemma.gguf")
    model(tmp_path / "gemma-folder" / "gemma.gguf")
    found = scan(tmp_path)
    assert found.models["gemma"].path == tmp_path / "gemma.gguf"
    assert found.notes == (
        f"not listing {tmp_path / 'gemma-folder' / 'gemma.gguf'}: a model named gemma is listed "
        f"already ({tmp_path / 'gemma.gguf'})",
    )


def test_files_added_to_a_folder_later_are_found(tmp_path: Path, projector_file: Path) -> None:
    (tmp_path / "gemma").mkdir()
    models_catalog = Catalog(pool_config(tmp_path))
    assert models_catalog.available() == {}
    model(tmp_path / "gemma" / "gemma.gguf")  # the directory itself does not change
    assert list(models_catalog.available()) == ["gemma"]
    projector = place(projector_file, tmp_path / "gemma" / "mmproj-gemma.gguf")
    assert models_catalog.available()["gemma"].projector == projector
    assert models_catalog.reload(pool_config(tmp_path)).added == ["gemma"]
    (tmp_path / "gemma" / "mmproj-gemma.gguf").unlink()
    assert models_catalog.reload(pool_config(tmp_path)).changed == ["gemma"]  # a reload says it no longer sees
    assert models_catalog.available()["gemma"].input_modalities == ["text"]


def test_a_projector_still_being_copied_is_given_once_complete(tmp_path: Path, projector_file: Path) -> None:
    model(tmp_path / "gemma.gguf")
    whole = projector_file.read_bytes()
    copy = tmp_path / "gemma.mmproj.gguf"
    copy.write_bytes(whole[: len(whole) // 2])
    models_catalog = Catalog(pool_config(tmp_path))
    assert models_catalog.available()["gemma"].projector is None
    with copy.open("ab") as stream:
        stream.write(whole[len(whole) // 2 :])
    assert models_catalog.available()["gemma"].projector == copy


# --- the mmproj setting ----------------------------------------------------------------------------


def test_the_mmproj_setting_wins_and_the_file_it_names_is_not_a_model(tmp_path: Path, projector_file: Path) -> None:
    models = tmp_path / "models"
    model(models / "gemma.gguf")
    place(projector_file, models / "mmproj-gemma.gguf")
    chosen = place(projector_file, tmp_path / "projectors" / "gemma-vision.gguf")
    model(models / "other.gguf")
    named_model_file = model(models / "plain-looking.gguf")  # not a projector by name or header: named all the same
    config_file = tmp_path / "config.json"
    config_file.write_text(
        json.dumps(
            {
                "model_manager": {
                    "models_directory": "models",
                    "models": {
                        "gemma": {"mmproj": "projectors/gemma-vision.gguf"},
                        "other": {"mmproj": str(named_model_file)},
                    },
                }
            }
        )
    )
    config = load_config(config_file).model_manager
    assert config.settings_for("gemma").mmproj == str(chosen)
    available = Catalog(config).available()
    assert list(available) == ["gemma", "other"]
    assert (available["gemma"].projector, available["other"].projector) == (chosen, named_model_file)


@pytest.mark.parametrize(
    ("manager", "message"),
    [
        ({"models": {"gemma": {"mmproj": "absent.gguf"}}}, "model_manager.models.gemma.mmproj: no projector file"),
        ({"models": {"gemma": {"mmproj": 3}}}, "model_manager.models.gemma.mmproj: must be a string"),
        ({"mmproj": "projector.gguf"}, "model_manager.mmproj: a projector is one model's"),
    ],
)
def test_a_wrong_mmproj_setting_is_a_config_error(tmp_path: Path, manager: dict, message: str) -> None:
    (tmp_path / "projector.gguf").write_bytes(b"GGUF")
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"model_manager": manager}))
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(config_file)
    assert str(config_file) in str(raised.value)
    if "absent" in json.dumps(manager):
        assert str(tmp_path / "absent.gguf") in str(raised.value)


# --- what each model takes, where it is shown ------------------------------------------------------


@pytest.fixture
def seeing_models(use_config, models_dir: Path, smollm2_file: Path, projector_file: Path) -> Path:
    """SmolLM2 with the tiny projector beside it, and the same model under another name without."""
    place(projector_file, models_dir / f"mmproj-{SMOLLM2}.gguf")
    link_model(smollm2_file, models_dir, "text-only")
    use_config(aliases={"vision": SMOLLM2})
    return models_dir


async def test_v1_models_says_what_each_model_takes(seeing_models: Path) -> None:
    client = AsyncClient()
    listed = (await client.get("/v1/models")).json()["data"]
    assert {model["id"]: model["input_modalities"] for model in listed} == {
        SMOLLM2: ["text", "image"],
        "text-only": ["text"],
        "vision": ["text", "image"],
    }
    for model_id, modalities in ((SMOLLM2, ["text", "image"]), ("text-only", ["text"]), ("vision", ["text", "image"])):
        one = (await client.get(f"/v1/models/{model_id}")).json()
        assert (one["id"], one["input_modalities"]) == (model_id, modalities)


async def test_the_openapi_description_says_it(seeing_models: Path) -> None:
    client = AsyncClient()
    document = (await client.get("/openapi.json")).json()

    def validator(path: str) -> jsonschema.Draft202012Validator:
        schema = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        return jsonschema.Draft202012Validator({**schema, "components": document["components"]})

    validator("/v1/models").validate((await client.get("/v1/models")).json())
    one = (await client.get(f"/v1/models/{SMOLLM2}")).json()
    check = validator("/v1/models/{model_id}")
    check.validate(one)
    assert not check.is_valid({**one, "input_modalities": ["smell"]})
    assert not check.is_valid({key: value for key, value in one.items() if key != "input_modalities"})


def test_the_models_table_command_and_admin_show_it(
    seeing_models: Path, monkeypatch: pytest.MonkeyPatch, admin_client: Client
) -> None:
    monkeypatch.setenv("LLAMA_SERVER_ADMIN_TOKEN", ADMIN_TOKEN)
    get = async_to_sync(AsyncClient().get)  # the running server's admin API, in-process
    monkeypatch.setattr(
        models_command, "admin_get", lambda path: get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    )
    out = io.StringIO()
    call_command("models", "--json", stdout=out)
    rows = {row["name"]: row["input_modalities"] for row in json.loads(out.getvalue())["models"]}
    assert rows == {SMOLLM2: ["text", "image"], "text-only": ["text"]}

    out = io.StringIO()
    call_command("models", stdout=out)
    header, *lines, _memory = out.getvalue().splitlines()
    can = header.index("CAN")
    assert {line.split()[0]: line[can:].split()[0] for line in lines} == {
        SMOLLM2: "chat,tools,vision",
        "text-only": "chat,tools",
    }

    model_services.discovered_models_sync(models=model_pool().catalog.available())
    rows_saved = dict(DiscoveredModel.objects.values_list("name", "projector"))
    assert rows_saved == {SMOLLM2: str(seeing_models / f"mmproj-{SMOLLM2}.gguf"), "text-only": ""}
    listing = admin_client.get("/admin/inference/discoveredmodel/").content.decode()
    assert "text+image" in listing and '<td class="field-inputs">text</td>' in listing


def test_the_models_page_draws_a_capabilities_column() -> None:
    root = Path(__file__).resolve().parent.parent / "dashboard"
    page = (root / "templates" / "dashboard" / "models.html").read_text()
    script = (root / "static" / "dashboard" / "models.js").read_text()
    headings = page.count("<th>")
    assert "<th>capabilities</th>" in page and f'colspan="{headings}"' in page and f'colspan="{headings}"' in script
    assert 'row.capabilities.join(", ")' in script


# --- the fixture is a working projector -------------------------------------------------------------


def test_the_tiny_projector_loads_and_encodes_an_image_with_smollm2(smollm2_file: Path, projector_file: Path) -> None:
    """llama.cpp's multimodal library accepts the fixture with SmolLM2 (a crash here ends the
    process: see write_projector's docstring), and one 32×32 image is 16 tokens of 576 floats."""
    import llama_cpp
    from llama_cpp import mtmd_cpp as mtmd

    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = 0
    text_model = llama_cpp.llama_model_load_from_file(str(smollm2_file).encode(), model_params)
    assert text_model
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, 1, False
    context = mtmd.mtmd_init_from_file(str(projector_file).encode(), text_model, params)
    try:
        assert context, "llama.cpp refused the projector"
        assert mtmd.mtmd_support_vision(context)
        pixels = bytes(range(256)) * (32 * 32 * 3 // 256)
        bitmap = mtmd.mtmd_bitmap_init(32, 32, (ctypes.c_uint8 * len(pixels)).from_buffer_copy(pixels))
        chunks = mtmd.mtmd_input_chunks_init()
        prompt = b"Look: " + mtmd.mtmd_default_marker() + b" What is it?"
        text = mtmd.mtmd_input_text(prompt, len(prompt), True, True)
        try:
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            assert mtmd.mtmd_tokenize(context, chunks, ctypes.byref(text), bitmaps, 1) == 0
            kinds = [
                mtmd.mtmd_input_chunk_get_type(mtmd.mtmd_input_chunks_get(chunks, index))
                for index in range(mtmd.mtmd_input_chunks_size(chunks))
            ]
            assert kinds == [
                mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT,
                mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE,
                mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT,
            ]
            image = mtmd.mtmd_input_chunks_get(chunks, 1)
            assert mtmd.mtmd_input_chunk_get_n_tokens(image) == 16
            assert mtmd.mtmd_encode_chunk(context, image) == 0
            embeddings = mtmd.mtmd_get_output_embd(context)
            assert any(embeddings[index] != 0 for index in range(16 * 576))
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)
    finally:
        if context:
            mtmd.mtmd_free(context)
        llama_cpp.llama_model_free(text_model)


def test_the_tiny_projector_is_small_and_the_same_every_time(tmp_path: Path, projector_file: Path) -> None:
    again = write_projector(tmp_path / "again.gguf")
    assert again.read_bytes() == projector_file.read_bytes()
    assert projector_file.stat().st_size < 2 * 1024 * 1024
    info = read_gguf_info(projector_file)
    assert (info.architecture, info.data_end) == ("clip", projector_file.stat().st_size)
