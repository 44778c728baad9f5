"""`stowage check`: is this install whole? Needs no database, Redis or storage.

An install that misses a file fails at its first request or its first migration, long after
`pip install` said yes; this finds that at build time (the Dockerfile runs it) by touching
everything a process loads: every module, the API and its OpenAPI document, the worker's job
table, each dashboard template, the static files and the SQL migrations.
"""

from __future__ import annotations

from app.config import Settings


def selfcheck(settings: Settings) -> list[str]:
    """One line per part checked; raises on the first part missing or broken."""
    from app.dashboard import routes as dashboard
    from app.main import create_app
    from app.migrate import migration_files
    from worker.settings import delivery_functions, functions

    api = create_app(settings)
    paths = api.openapi()["paths"]
    jobs = functions(settings) + delivery_functions(settings)
    templates = dashboard.template_names()
    for name in templates:
        dashboard.compile_template(name)
    # previews load their native libraries lazily: load them here (a wheel without them fails
    # the build, not the first PDF or video a worker meets)
    import av
    import pypdfium2

    migrations = migration_files()
    if not migrations:
        raise FileNotFoundError("no SQL migrations in this install (package app.migrations)")
    return [
        f"api: {len(paths)} paths",
        f"worker: {len(jobs)} job functions",
        f"dashboard: {len(templates)} templates, {len(dashboard.STATIC)} static files",
        f"migrations: {len(migrations)} ({migrations[0].name} .. {migrations[-1].name})",
        f"previews: PDFium {getattr(pypdfium2, 'PDFIUM_INFO', '?')}, PyAV {av.__version__} (FFmpeg"
        f" {getattr(av, 'ffmpeg_version_info', '?')})",
    ]
