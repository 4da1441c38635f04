/// The OpenAPI 3.0 description of the service, served at GET /openapi.yaml.
let openAPIDocument = """
openapi: 3.0.3
info:
  title: BiLRP explanation server
  version: "1"
  description: >
    Explains the similarity of image pairs with BiLRP. Images are base64 PNG or JPEG in JSON.
    Errors are JSON {"error": "..."} with status 400 (bad input), 401 (token), 404 (unknown
    factor id), 413 (body too large), 429 (queue full, with Retry-After), 503 (timeout).
paths:
  /health:
    get: {summary: Liveness, responses: {"200": {description: '{"status": "ok"}'}}}
  /metrics:
    get: {summary: Prometheus metrics (text format 0.0.4), responses: {"200": {description: metrics}}}
  /v1/model:
    get: {summary: The loaded model, settings, limits and what requests may override, responses: {"200": {description: JSON}}}
  /v1/factors:
    post:
      summary: Compute and cache the relevance factors A(x) of one image; returns their id
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [image]
              properties:
                image: {type: string, format: byte}
                settings: {$ref: '#/components/schemas/Settings'}
      responses:
        "200":
          description: The factor id (a SHA-256 of the image and the settings) and the patch grid
          content:
            application/json:
              schema:
                type: object
                properties:
                  id: {type: string}
                  cached: {type: boolean}
                  outputs: {type: integer}
                  patches: {type: integer}
                  patch_rows: {type: integer}
                  patch_columns: {type: integer}
                  patch: {type: integer}
                  similarity_embedding_norm: {type: number, description: "||phi(x)||, the head's output norm (cosine similarity divides by it)"}
  /v1/explain:
    post:
      summary: Explain one pair; the answer is the JSON of `bilrp explain --json`
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [first, second]
              properties:
                first: {$ref: '#/components/schemas/Input'}
                second: {$ref: '#/components/schemas/Input'}
                settings: {$ref: '#/components/schemas/Settings'}
                pictures: {type: boolean, description: add pair_png and heatmap_png (base64 PNG)}
                matrix: {type: boolean, description: add matrix_npy (base64 of the NPY `bilrp explain --npy` writes)}
      responses:
        "200": {description: 'The explanation report: similarity, conservation, model, inputs, top pairs, timings'}
  /v1/explain/batch:
    post:
      summary: One query against many items (images or factor ids)
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [query, items]
              properties:
                query: {$ref: '#/components/schemas/Input'}
                items: {type: array, items: {$ref: '#/components/schemas/Input'}}
                settings: {$ref: '#/components/schemas/Settings'}
      responses:
        "200": {description: '{"query_factors": id, "results": [report, ...]}'}
components:
  schemas:
    Input:
      type: object
      description: exactly one of image or factors
      properties:
        image: {type: string, format: byte, description: base64 PNG or JPEG}
        factors: {type: string, description: an id returned by /v1/factors}
    Settings:
      type: object
      properties:
        rules: {type: string, description: preset or composite string}
        patch: {type: integer}
        top_k: {type: integer}
        similarity: {type: string, enum: [dot, cosine]}
        head: {type: string, description: 'random:H[:SEED], identity, sumpool, avgpool'}
        layer: {type: integer, description: at most the loaded model's layer count}
"""
