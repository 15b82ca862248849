"""The admin API (/admin/*, with the admin token): load, unload, reload, reap, the models table.
The management commands and the console call these."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from inference import protocol
from inference.api.authentication import Credentials
from inference.api.handler import APIView
from inference.api.openapi import MODEL_TABLE_SCHEMA, error_responses, names_schema
from inference.connections import database_call
from inference.selectors.model_table import model_table
from inference.services import models as model_services


class AdminView(APIView):
    credentials = Credentials.ADMIN


class AdminLoadView(AdminView):
    @extend_schema(
        operation_id="adminLoad",
        summary="Load a model now",
        request={"application/json": protocol.AdminModelSerializer},
        responses={200: names_schema("loaded"), **error_responses(400, 401, 404, 503)},
    )
    async def post(self, request: Request) -> Response:
        model, reason = protocol.AdminModelSerializer.parse(request.data)
        return Response({"loaded": [await model_services.model_load(model=model, reason=reason)]})


class AdminUnloadView(AdminView):
    @extend_schema(
        operation_id="adminUnload",
        summary="Unload a model, or all",
        request={"application/json": protocol.AdminModelSerializer},
        responses={200: names_schema("unloaded", "pending"), **error_responses(400, 401, 404)},
    )
    async def post(self, request: Request) -> Response:
        model, reason = protocol.AdminModelSerializer.parse(request.data)
        return Response(await model_services.model_unload(model=model, reason=reason))


class AdminModelsView(AdminView):
    @extend_schema(
        operation_id="adminModels",
        summary="Every model with its state, slots, queue and usage today",
        responses={200: MODEL_TABLE_SCHEMA, **error_responses(401, 503)},
    )
    async def get(self, request: Request) -> Response:
        table = await database_call(model_table, needed_for="the models' usage today")
        return Response(table.as_dict())


class AdminReloadView(AdminView):
    @extend_schema(
        operation_id="adminReload",
        summary="Re-read config.json and rediscover the models",
        request=None,
        responses={200: names_schema("added", "removed", "changed"), **error_responses(400, 401)},
    )
    async def post(self, request: Request) -> Response:
        return Response(await model_services.config_reload())


class AdminReapView(AdminView):
    @extend_schema(
        operation_id="adminReap",
        summary="Unload the idle models now",
        request=None,
        responses={200: names_schema("unloaded"), **error_responses(401)},
    )
    async def post(self, request: Request) -> Response:
        return Response(await model_services.models_reap())
