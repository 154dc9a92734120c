# Sourced by .ci/run: start the real servers the storage tests run against (PostgreSQL for
# registry metadata, an S3-compatible server for registry blobs) and export their URLs.
# Each script is idempotent and installs what it needs from Debian or PyPI.
eval "$(scripts/start-postgres.sh)"
eval "$(scripts/start-s3.sh)"
eval "$(scripts/start-redis.sh)"
# Headless Chromium for the HTML report tests (tests/report/test_browser.py).
scripts/install-chromium.sh
