# The gateway's HTTP API, run by an unprivileged user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_DATA_DIR=/var/lib/gateway \
    GATEWAY_AGREEMENTS_DIR=/app/agreements \
    GATEWAY_POLICIES_DIR=/app/policies \
    GATEWAY_MASTER_KEY_FILE=/run/secrets/gateway_master_key

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# hsm: python-pkcs11, for GATEWAY_KEY_BACKEND=pkcs11 with the HSM vendor's PKCS#11
# library mounted or added in a derived image (keys/README.md).
RUN pip install --no-cache-dir ".[postgres,hsm]" \
    && useradd --system --uid 10001 --home-dir /var/lib/gateway --create-home gateway \
    && chmod 700 /var/lib/gateway
COPY agreements ./agreements
COPY policies ./policies

USER gateway
EXPOSE 8000
# `gateway init` is idempotent: it migrates the schema and loads agreements, then serve.
CMD ["sh", "-c", "gateway init && exec gateway serve --host 0.0.0.0 --port 8000"]
