#!/usr/bin/env bash
# The server against its OpenAPI document: the document validated (openapi-spec-validator), then
# schemathesis against a live `bilrp serve` on loopback with the small fixture model (VGG-16
# features[:10], 32 x 32 inputs; texts with the fetched all-MiniLM-L6-v2, make assets), bounded examples per operation: no 5xx, every status, header,
# content type and body as documented, invalid inputs refused. Needs .venv-test (make setup).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.build-omp/release/bilrp}
VENV=${VENV:-.venv-test}
SPEC=Sources/BiLRPServer/Resources/openapi.yaml
EXAMPLES=${EXAMPLES:-60}
F=Tests/BiLRPTests/Fixtures

"$VENV/bin/openapi-spec-validator" "$SPEC"

log=$(mktemp)
"$BIN" serve --weights "$F/vgg16_l10.safetensors" --arch vgg16 --layer 10 --size 32 --patch 4 \
  --head random:8:3 --preprocess torchvision --text-model assets/models/all-MiniLM-L6-v2 --port 0 --timeout 20 --token contract-token >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
port=""
for _ in $(seq 100); do
  port=$(sed -n 's#^bilrp: serving on http://127.0.0.1:\([0-9]*\)$#\1#p' "$log")
  [ -n "$port" ] && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done
[ -n "$port" ] || { echo "contract test: the server did not start"; cat "$log"; exit 1; }

# positive_data_acceptance is left out on purpose: schema-valid random base64 is not a decodable
# image, and a 400 naming that is the right answer.
"$VENV/bin/schemathesis" run "$SPEC" --url "http://127.0.0.1:$port" \
  -H "Authorization: Bearer contract-token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection \
  --max-examples "$EXAMPLES" --request-timeout 30 --seed 2026 --generation-deterministic --no-color
# The server is still serving after all of it.
curl -sf "http://127.0.0.1:$port/health" >/dev/null
echo "contract test: the server answered /health after the run"
