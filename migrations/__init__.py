"""The SQL migrations, applied in name order by `stowage migrate` (app/migrate.py). This folder
is installed as the package ``app.migrations`` (see pyproject.toml), so a wheel carries them."""
