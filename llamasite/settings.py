"""Django settings for llamasite. Server behaviour comes from config.json (inference.config)."""

import os
import sys
from pathlib import Path

import dj_database_url

from inference.config import ConfigError, get_config
from inference.secret_files import read_or_create_secret

BASE_DIR = Path(__file__).resolve().parent.parent

try:
    CONFIG = get_config()
except ConfigError:
    CONFIG = None  # `manage.py serve` reports the problem and refuses to start

_log_level = CONFIG.server.log_level if CONFIG else "INFO"
_cors_origins = CONFIG.server.cors_origins if CONFIG else ("*",)
_behind_https_proxy = CONFIG.server.behind_https_proxy if CONFIG else False


# DJANGO_SECRET_KEY, or a key generated once into a file only its owner can read.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or read_or_create_secret(BASE_DIR / ".secret_key")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = list(CONFIG.server.host_names) if CONFIG else ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "inference",
    "dashboard",
]

# Every middleware here must be async-capable: a sync-only one would make each request hold a
# thread until its view returns (for a non-streamed completion, the whole generation). That is
# why static files come from ServeStatic (WhiteNoise's fork with an async middleware), not
# WhiteNoise.
MIDDLEWARE = [
    "inference.api.host_check.PagesAllowedHostMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "dashboard.headers.ConsoleHeadersMiddleware",
]

# The API (see llamasite.asgi; its paths are inference.api.urls') skips the pages' middleware: it
# needs only the Host check (its own, answering in its error shape) and CORS, which is for
# the API alone (server.cors_origins): the pages are same-origin, and a cross-origin answer is
# one a page elsewhere could read.
API_MIDDLEWARE = ["inference.api.host_check.AllowedHostMiddleware", "corsheaders.middleware.CorsMiddleware"]

ROOT_URLCONF = "llamasite.urls"
ASGI_APPLICATION = "llamasite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# DATABASE_URL (e.g. sqlite:////var/lib/llamasite/db.sqlite3); default: db.sqlite3 beside manage.py.
DATABASES = {"default": dj_database_url.config(default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers (the dashboard) work while the server writes; IMMEDIATE avoids
    # lock-upgrade deadlocks between the threads that write records. synchronous=NORMAL is WAL's
    # recommended setting: a commit survives the process being killed (only an OS crash can
    # lose the last ones), and costs no fsync per request record.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }
# The threads that live long (the records thread, model workers, the executors that check API
# keys) recycle their connection before each unit of work (inference.connections): kept up to 10
# minutes rather than opened per record, and checked before reuse, so that one a database restart
# broke is replaced rather than failing every query after.
DATABASES["default"]["CONN_MAX_AGE"] = 600
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database host that does not answer is given up in seconds, not after TCP's minutes.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The live feed reaches the dashboards of this process only, unless REDIS_URL names a Redis that
# several server processes share (e.g. redis://127.0.0.1:6379/0).
# API keys' requests per minute are counted there too (inference.access.keys).
REDIS_URL = os.environ.get("REDIS_URL") or None
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# server.max_body_bytes: bigger bodies get a 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = CONFIG.server.max_body_bytes if CONFIG else 8 * 1024 * 1024

# Behind the TLS proxy of docs/security.md (Access): trust its X-Forwarded-Proto, send cookies
# over HTTPS only, ask browsers to stay on HTTPS (`manage.py check --deploy` is clean).
if _behind_https_proxy:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^health$"]
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 60 * 60 * 24 * 365
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve the apps' static files (the admin's, the dashboard's) without a collectstatic step.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_ALLOW_ALL_ORIGINS = False  # CORS is for the API alone
LOGIN_URL = "admin:login"

CORS_ALLOW_ALL_ORIGINS = "*" in _cors_origins
CORS_ALLOWED_ORIGINS = [origin for origin in _cors_origins if origin != "*"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["inference.protocol.JSONBodyParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "inference.protocol.FirstRendererNegotiation",
    "EXCEPTION_HANDLER": "inference.protocol.openai_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "llamasite",
    "DESCRIPTION": "An OpenAI-compatible server for local llama.cpp models.",
    "VERSION": "1.0.0",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "inference.api.openapi.append_components",
    ],
}


def _stderr_is_the_journal() -> bool:
    """Whether stderr is systemd's journal stream, which stamps each line with its own time.

    systemd sets JOURNAL_STREAM to that stream's "device:inode"; comparing it with stderr's
    keeps the timestamps when the variable was only inherited (a shell started by a service,
    output redirected to a file).
    """
    try:
        stderr = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no real stderr
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{stderr.st_dev}:{stderr.st_ino}"


# Lines carry their time, except in the journal, which stamps every line itself.
_log_format = "%(levelname)s %(name)s: %(message)s"
if not _stderr_is_the_journal():
    _log_format = f"%(asctime)s {_log_format}"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": _log_format}},
    # httpx logs every request's full URL at INFO, and httpcore's DEBUG traces every answer's
    # headers: a pull's URL may hold a password, a redirect's Location a signature.
    "filters": {"redacted_urls": {"()": "inference.pulling.redaction.RedactedURLs"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"httpx": {"filters": ["redacted_urls"]}, "httpcore": {"level": "INFO"}},
    "root": {"handlers": ["stderr"], "level": _log_level},
}
