#!/bin/sh
# One-shot set-up of the compose MinIO for Stowage (run by the `minio-init` service, image
# minio/mc). Idempotent: safe on every `docker compose up`.
#
# Everything comes from the same STOWAGE_* / AWS_* variables the API and worker get, so the
# buckets created here are by construction the ones Stowage uses:
#   STOWAGE_S3_ENDPOINT_URL              where MinIO answers (http://minio:9000 in compose)
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
#   STOWAGE_CACHE_URL, STOWAGE_STORE_URL  s3://BUCKET[/PREFIX]; file:// URLs are skipped
#
# Incomplete multipart uploads: Stowage aborts its own on failure, but a killed process can
# leave one behind. MinIO does not implement the S3 lifecycle action
# AbortIncompleteMultipartUpload (it rejects or silently drops it), so no lifecycle rule is
# added here: MinIO's own sweep does that job (MINIO_API_STALE_UPLOADS_EXPIRY on the `minio`
# service). On AWS S3, apply deploy/s3-lifecycle.json to both buckets instead.
set -eu

alias_name=stowage
mc alias set "$alias_name" "${STOWAGE_S3_ENDPOINT_URL:?}" "${AWS_ACCESS_KEY_ID:?}" \
  "${AWS_SECRET_ACCESS_KEY:?}"

for url in "${STOWAGE_CACHE_URL:?}" "${STOWAGE_STORE_URL:?}"; do
  case "$url" in
    s3://*) ;;
    *) echo "minio-init: $url is not an s3:// URL; nothing to create"; continue ;;
  esac
  rest=${url#s3://}
  bucket=${rest%%/*}
  mc mb --ignore-existing "$alias_name/$bucket"
done
echo "minio-init: buckets ready"
