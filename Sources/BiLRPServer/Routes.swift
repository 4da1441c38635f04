import BiLRP
import BiLRPIO
import Foundation
import Hummingbird
import NIOCore

// MARK: - Request bodies

/// One input of a request: an image (base64 PNG/JPEG) or the id of factors computed before.
struct InputRef: Decodable {
    var image: String?
    var factors: String?
}

struct ExplainRequest: Decodable {
    var first: InputRef
    var second: InputRef
    var settings: ExplanationService.RequestSettings?
    /// Include the pair picture and the heatmap picture (base64 PNG).
    var pictures: Bool?
    /// Include R as a base64 NPY file (the bytes `bilrp explain --npy` writes).
    var matrix: Bool?
}

struct FactorsRequest: Decodable {
    var image: String
    var settings: ExplanationService.RequestSettings?
}

struct BatchRequest: Decodable {
    var query: InputRef
    var items: [InputRef]
    var settings: ExplanationService.RequestSettings?
}

struct FactorsAnswer: Encodable {
    var id: String
    var cached: Bool
    var outputs: Int
    var patches: Int
    var patch_rows: Int
    var patch_columns: Int
    var patch: Int
    var similarity_embedding_norm: Float
}

struct BatchAnswer: Encodable {
    var query_factors: String?
    var results: [ExplanationReport]
}

// MARK: - Handling

extension ExplanationService {
    /// The JSON answer of an error.
    static func errorResponse(_ e: ServiceError) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let r = e.retryAfter { headers[.retryAfter] = "\(r)" }
        let body = (try? JSONSerialization.data(withJSONObject: ["error": e.message], options: [.sortedKeys])) ?? Data()
        return Response(status: .init(code: e.status), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    static func json(_ data: Data, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func encode<T: Encodable>(_ v: T) throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try enc.encode(v)
    }

    /// A readable message for a JSON decoding failure: what and where.
    static func describe(_ e: DecodingError) -> String {
        func path(_ c: [any CodingKey]) -> String {
            c.isEmpty ? "the body" : c.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch e {
        case let .typeMismatch(t, c): return "\(path(c.codingPath)) has the wrong type (expected \(t))"
        case let .valueNotFound(t, c): return "\(path(c.codingPath)) is null (expected \(t))"
        case let .keyNotFound(k, c): return "missing field '\((c.codingPath + [k]).map(\.stringValue).joined(separator: "."))'"
        case let .dataCorrupted(c): return "malformed JSON at \(path(c.codingPath)): \(c.debugDescription)"
        @unknown default: return "malformed request body"
        }
    }

    func decode<T: Decodable>(_ type: T.Type, _ body: Data) throws -> T {
        do { return try JSONDecoder().decode(type, from: body) } catch let e as DecodingError {
            throw ServiceError(400, Self.describe(e))
        }
    }

    /// Runs one request: authentication, body limit, timeout, errors as JSON, metrics.
    func handle(_ route: String, _ request: Request, needsBody: Bool = true, authenticated: Bool = true,
                _ work: @escaping @Sendable (Data) async throws -> Response) async -> Response {
        let start = DispatchTime.now().uptimeNanoseconds
        var response: Response
        do {
            if authenticated, let token = configuration.token, request.headers[.authorization] != "Bearer \(token)" {
                throw ServiceError(401, "missing or wrong bearer token")
            }
            var body = Data()
            if needsBody {
                let buffer: ByteBuffer
                do { buffer = try await request.body.collect(upTo: configuration.maxBodyBytes) } catch {
                    throw ServiceError(413, "the request body is larger than the limit of \(configuration.maxBodyBytes) bytes")
                }
                body = Data(buffer.readableBytesView)
                // multipart/form-data: the same request, with files as parts.
                if let boundary = Multipart.boundary(contentType: request.headers[.contentType]) {
                    body = try Multipart.json(try Multipart.parse(body, boundary: boundary))
                }
            }
            let timeout = configuration.timeoutSeconds
            let payload = body
            response = try await withThrowingTaskGroup(of: Response.self) { group in
                group.addTask { try await work(payload) }
                group.addTask {
                    try await Task.sleep(nanoseconds: UInt64(timeout * 1e9))
                    throw ServiceError(503, "the request took longer than \(timeout) s", retryAfter: 5)
                }
                let r = try await group.next()!
                group.cancelAll()
                return r
            }
        } catch let e as ServiceError {
            response = Self.errorResponse(e)
        } catch let e as BiLRPError {
            response = Self.errorResponse(ServiceError(400, "\(e)"))
        } catch {
            response = Self.errorResponse(ServiceError(500, "internal error: \(error)"))
        }
        metrics.record(route: route, status: response.status.code,
                       seconds: Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
        return response
    }

    func base64(_ s: String, _ field: String) throws -> Data {
        guard let d = Data(base64Encoded: s, options: .ignoreUnknownCharacters), !d.isEmpty else {
            throw ServiceError(400, "\(field) is not valid base64 image data")
        }
        return d
    }

    /// Resolves an input to factors, checking that cached factors fit the request's settings.
    func resolve(_ ref: InputRef, _ field: String, _ s: ExplanationSettings) async throws -> (CachedFactors, String) {
        switch (ref.image, ref.factors) {
        case let (image?, nil):
            let r = try await factors(image: try base64(image, "\(field).image"), settings: s)
            return (r.value, r.id)
        case let (nil, id?):
            let v = try await factors(id: id)
            guard v.factors.grid.patch == s.patch else {
                throw ServiceError(400, "\(field).factors was computed with patch \(v.factors.grid.patch), the request asks for \(s.patch)")
            }
            return (v, id)
        default:
            throw ServiceError(400, "\(field) needs exactly one of 'image' (base64) or 'factors' (an id)")
        }
    }

    func report(_ a: CachedFactors, _ b: CachedFactors, sources: (String, String), settings s: ExplanationSettings,
                pictures: Bool, matrix: Bool) async throws -> ExplanationReport {
        let loaded = try explainer(s)
        guard a.factors.outputs == b.factors.outputs else {
            throw ServiceError(400, "the two inputs' factors have different numbers of outputs")
        }
        let t = DispatchTime.now().uptimeNanoseconds
        let pair = try loaded.explainer.explain(a.factors, b.factors)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t) * 1e-9
        var r = ExplanationReport(pair, loaded: loaded, sources: sources, timings: ["pair_seconds": seconds])
        if pictures {
            let (pairPNG, heatPNG) = try await pool.run {
                (try Pictures.pairPicture(pair, a.display, b.display), try Pictures.heatmapPicture(pair, a.display, b.display))
            }
            r.pair_png = pairPNG.base64EncodedString()
            r.heatmap_png = heatPNG.base64EncodedString()
        }
        if matrix {
            r.matrix_npy = NPY.encode(try Tensor(shape: [pair.rows, pair.columns], data: pair.relevance)).base64EncodedString()
        }
        return r
    }

    // MARK: - Routes

    /// The HTTP routes of the service.
    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/health") { request, _ in
            await self.handle("/health", request, needsBody: false, authenticated: false) { _ in
                Self.json(Data("{\"status\": \"ok\"}".utf8))
            }
        }
        router.get("/metrics") { request, _ in
            await self.handle("/metrics", request, needsBody: false) { _ in
                let text = self.metrics.render(
                    queueDepth: self.pool.queueDepth, cacheEntries: await self.cache.count, cacheBytes: await self.cache.bytes,
                    hits: await self.cache.hits, misses: await self.cache.misses, computations: await self.cache.computations)
                return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                                body: .init(byteBuffer: ByteBuffer(string: text)))
            }
        }
        router.get("/openapi.yaml") { request, _ in
            await self.handle("/openapi.yaml", request, needsBody: false, authenticated: false) { _ in
                Response(status: .ok, headers: [.contentType: "application/yaml"],
                         body: .init(byteBuffer: ByteBuffer(string: openAPIDocument)))
            }
        }
        router.get("/v1/model") { request, _ in
            await self.handle("/v1/model", request, needsBody: false) { _ in
                let b = self.base
                let info: [String: Any] = [
                    "source": b.source, "layers": b.model.layers.map(\.name), "head": b.explainer.head.description,
                    "rules": b.explainer.composite.description, "similarity": b.settings.similarity,
                    "patch": b.settings.patch, "size": b.settings.size, "preprocess": b.preprocessing.rawValue,
                    "notes": b.notes,
                    "limits": ["max_body_bytes": self.configuration.maxBodyBytes, "max_image_pixels": self.configuration.maxImagePixels,
                               "max_batch": self.configuration.maxBatch, "timeout_seconds": self.configuration.timeoutSeconds,
                               "queue_limit": self.configuration.queueLimit, "compute_slots": self.configuration.computeSlots,
                               "cache_bytes": self.configuration.cacheBytes],
                    "overridable": ["rules", "patch", "top_k", "similarity", "head", "layer (at most \(b.model.layers.count))"],
                ]
                return Self.json(try JSONSerialization.data(withJSONObject: info, options: [.prettyPrinted, .sortedKeys]))
            }
        }
        router.post("/v1/factors") { request, _ in
            await self.handle("/v1/factors", request) { body in
                let req = try self.decode(FactorsRequest.self, body)
                let s = try self.settings(req.settings)
                let r = try await self.factors(image: try self.base64(req.image, "image"), settings: s)
                let f = r.value.factors
                let norm = f.embedding.reduce(Float(0)) { $0 + $1 * $1 }.squareRoot()
                return Self.json(try Self.encode(FactorsAnswer(
                    id: r.id, cached: r.cached, outputs: f.outputs, patches: f.grid.count, patch_rows: f.grid.rows,
                    patch_columns: f.grid.columns, patch: f.grid.patch, similarity_embedding_norm: norm)))
            }
        }
        router.post("/v1/explain") { request, _ in
            await self.handle("/v1/explain", request) { body in
                let req = try self.decode(ExplainRequest.self, body)
                let s = try self.settings(req.settings)
                _ = try self.explainer(s)  // a bad setting is named before any input is looked at
                let (a, _) = try await self.resolve(req.first, "first", s)
                let (b, _) = try await self.resolve(req.second, "second", s)
                let r = try await self.report(a, b, sources: ("first", "second"), settings: s,
                                              pictures: req.pictures ?? false, matrix: req.matrix ?? false)
                return Self.json(try r.json())
            }
        }
        router.post("/v1/explain/batch") { request, _ in
            await self.handle("/v1/explain/batch", request) { body in
                let req = try self.decode(BatchRequest.self, body)
                guard !req.items.isEmpty else { throw ServiceError(400, "items is empty") }
                guard req.items.count <= self.configuration.maxBatch else {
                    throw ServiceError(400, "items has \(req.items.count) entries, more than the limit of \(self.configuration.maxBatch)")
                }
                let s = try self.settings(req.settings)
                _ = try self.explainer(s)
                let (q, qid) = try await self.resolve(req.query, "query", s)
                var results: [ExplanationReport] = []
                for (i, item) in req.items.enumerated() {
                    let (b, _) = try await self.resolve(item, "items[\(i)]", s)
                    results.append(try await self.report(q, b, sources: ("query", "items[\(i)]"), settings: s,
                                                         pictures: false, matrix: false))
                }
                return Self.json(try Self.encode(BatchAnswer(query_factors: qid, results: results)))
            }
        }
        return router
    }
}
