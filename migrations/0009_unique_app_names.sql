-- App names are how operators tell apps apart (the CLI, the dashboard): one name, one app.
-- Names that repeat already get their creation order appended, oldest first keeping its own.
UPDATE apps SET name = apps.name || ' (' || d.n || ')'
FROM (SELECT id, row_number() OVER (PARTITION BY name ORDER BY created_at, id) AS n
      FROM apps) d
WHERE d.id = apps.id AND d.n > 1;
CREATE UNIQUE INDEX apps_name ON apps (name);
