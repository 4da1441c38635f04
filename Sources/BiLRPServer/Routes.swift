import BiLRP
import BiLRPIO
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOPosix

/// The request context: Hummingbird's core storage and the connection, so that a request whose
/// client went away stops its computation instead of finishing it for nobody.
public struct BiLRPRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

extension HTTPField.Name {
    static let requestID = HTTPField.Name("X-Request-Id")!
}

extension ExplanationService {
    /// Every route and its methods: a known path with another method is a 405 naming them.
    static let routes: [String: [HTTPRequest.Method]] = [
        "/": [.get], "/viewer.js": [.get], "/viewer.css": [.get],
        "/health": [.get], "/ready": [.get], "/metrics": [.get], "/openapi.yaml": [.get], "/v1/model": [.get],
        "/v1/factors": [.post], "/v1/explain": [.post], "/v1/explain/batch": [.post], "/v1/explain/text": [.post], "/v1/explain/text/batch": [.post],
    ]

    // MARK: - Answers

    static func json(_ data: Data, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func encode<T: Encodable>(_ v: T) throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try enc.encode(v)
    }

    /// The JSON answer of an error: `{"error", "status", "request_id"}`.
    static func errorResponse(_ e: ServiceError, requestID: String) -> Response {
        var r = json((try? encode(ErrorAnswer(error: e.message, status: e.status, request_id: requestID))) ?? Data(),
                     status: .init(code: e.status))
        if let s = e.retryAfter { r.headers[.retryAfter] = "\(s)" }
        if e.status == 401 { r.headers[.wwwAuthenticate] = "Bearer realm=\"bilrp\"" }
        return r
    }

    /// An incoming X-Request-Id when it is a sane token (at most 128 of A-Z a-z 0-9 . _ : -), else a new one.
    static func requestID(_ incoming: String?) -> String {
        if let s = incoming, (1...128).contains(s.count),
           s.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) && $0.isASCII || "._:-".unicodeScalars.contains($0) }) {
            return s
        }
        return UUID().uuidString.lowercased()
    }

    /// The bearer token check: the scheme case-insensitive (RFC 9110), the token compared in
    /// constant time (as SHA-256 digests, so the length is not revealed either).
    func authorized(_ header: String?) -> Bool {
        guard let token = configuration.token else { return true }
        guard let header, let space = header.firstIndex(of: " ") else { return false }
        guard header[..<space].lowercased() == "bearer" else { return false }
        let given = SHA256.hash(data: Data(header[space...].trimmingCharacters(in: .whitespaces).utf8))
        let expected = SHA256.hash(data: Data(token.utf8))
        var difference: UInt8 = 0
        for (a, b) in zip(given, expected) { difference |= a ^ b }
        return difference == 0
    }

    /// The body of a POST: its size limit (from Content-Length before reading, then while reading),
    /// its content type (JSON, or multipart/form-data turned into the same JSON).
    func body(_ request: Request) async throws -> Data {
        let limit = configuration.maxBodyBytes
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
            throw ServiceError(413, "the request body of \(length) bytes is larger than the limit of \(limit) bytes")
        }
        let type = request.headers[.contentType]
        let boundary = Multipart.boundary(contentType: type)
        if boundary == nil {
            let media = type?.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            guard let media, media == "application/json" || (media.hasPrefix("application/") && media.hasSuffix("+json")) else {
                throw ServiceError(415, "the body must be JSON with 'Content-Type: application/json', or multipart/form-data (got \(type.map { "'\($0)'" } ?? "no Content-Type"))")
            }
        }
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: limit) } catch {
            throw ServiceError(413, "the request body is larger than the limit of \(limit) bytes")
        }
        let data = Data(buffer.readableBytesView)
        if let boundary { return try Multipart.json(try Multipart.parse(data, boundary: boundary)) }
        return data
    }

    /// Runs one request: request id, authentication, body, timeout, errors as JSON, metrics, log line.
    func handle(_ route: String, _ request: Request, _ context: BiLRPRequestContext, needsBody: Bool = true,
                authenticated: Bool = true, _ work: @escaping @Sendable (Data) async throws -> Response) async -> Response {
        let start = DispatchTime.now().uptimeNanoseconds
        let id = Self.requestID(request.headers[.requestID])
        let stats = RequestStats()
        metrics.inFlight.increment()
        defer { metrics.inFlight.decrement() }
        var response: Response
        var cause: String?
        do {
            if authenticated, !authorized(request.headers[.authorization]) {
                throw ServiceError(401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')")
            }
            let payload = needsBody ? try await body(request) : Data()
            let timeout = configuration.timeoutSeconds
            response = try await RequestStats.$current.withValue(stats) {
                try await withThrowingTaskGroup(of: Response.self) { group in
                    group.addTask { try await work(payload) }
                    let channel = context.channel
                    // Timers on a real event loop (the test client's channel has a manual clock).
                    let timers = MultiThreadedEventLoopGroup.singleton.next()
                    group.addTask {
                        try await sleep(seconds: timeout, on: timers)
                        throw ServiceError(503, "the request took longer than the limit of \(timeout) s", retryAfter: 5)
                    }
                    // The client went away: nobody will read the answer (499, as nginx logs it).
                    // Polled: a callback on the connection's closeFuture per request would pile up
                    // on a kept-alive connection until it closes. A channel not active to begin
                    // with has no client to watch (the in-process test client's).
                    if channel.isActive {
                        group.addTask {
                            while channel.isActive { try await sleep(seconds: 0.1, on: timers) }
                            throw ServiceError(499, "the client closed the connection before the answer")
                        }
                    }
                    defer { group.cancelAll() }
                    return try await group.next()!
                }
            }
        } catch let e as ServiceError {
            response = Self.errorResponse(e, requestID: id)
            cause = e.message
        } catch let e as BiLRPError {
            response = Self.errorResponse(ServiceError(400, "\(e)"), requestID: id)
            cause = "\(e)"
        } catch {
            response = Self.errorResponse(ServiceError(500, "internal error: \(error)"), requestID: id)
            cause = "\(error)"
        }
        response.headers[.requestID] = id
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        finish(route, request, response, id: id, seconds: seconds, stats: stats, cause: cause)
        return response
    }

    /// The request's metrics (scrapes of /metrics are not traffic) and its one log line.
    func finish(_ route: String, _ request: Request, _ response: Response, id: String, seconds: Double,
                stats: RequestStats, cause: String?) {
        let code = Int(response.status.code)
        if route != "/metrics" { metrics.record(route: route, code: code, seconds: seconds) }
        let v = stats.values
        var meta: Logger.Metadata = [
            "request_id": .string(id), "method": .string(request.method.rawValue), "route": .string(route),
            "path": .string(request.uri.path), "status": .stringConvertible(code),
            "bytes": .stringConvertible(response.body.contentLength ?? 0),
            "seconds": .stringConvertible((seconds * 1e6).rounded() / 1e6),
            "queue_wait_seconds": .stringConvertible((v.wait * 1e6).rounded() / 1e6),
            "compute_seconds": .stringConvertible((v.compute * 1e6).rounded() / 1e6),
        ]
        if let hit = v.hit { meta["cache_hit"] = .stringConvertible(hit) }
        if let cause { meta["error"] = .string(cause) }
        logger.log(level: code >= 500 ? .error : .info, "request", metadata: meta)
    }

    func base64(_ s: String, _ field: String) throws -> Data {
        guard let d = Data(base64Encoded: s, options: .ignoreUnknownCharacters), !d.isEmpty else {
            throw ServiceError(400, "\(field) is not valid base64 image data")
        }
        return d
    }

    /// Resolves an input to factors: an image is computed (or found in the cache), a factor id
    /// must have been computed with the settings the request asks for (else 409).
    func resolve(_ ref: InputRef, _ field: String, _ s: ExplanationSettings) async throws -> (CachedFactors, String) {
        switch (ref.image, ref.factors) {
        case let (image?, nil):
            let r = try await factors(image: try base64(image, "\(field).image"), field: "\(field).image", settings: s)
            return (r.value, r.id)
        case let (nil, id?):
            return (try await factors(id: id, field: "\(field).factors", settings: s), id)
        default:
            throw ServiceError(400, "\(field) needs exactly one of 'image' (base64) or 'factors' (an id)")
        }
    }

    func report(_ a: CachedFactors, _ b: CachedFactors, sources: (String, String), settings s: ExplanationSettings,
                pictures: Bool, matrix: Bool) async throws -> ExplanationReport {
        let loaded = try await explainer(s)
        guard a.factors.outputs == b.factors.outputs else {
            throw ServiceError(400, "the two inputs' factors have different numbers of outputs")
        }
        if matrix {
            let bytes = a.factors.grid.count * b.factors.grid.count * 4 * 4 / 3
            guard bytes <= configuration.maxResponseBytes else {
                throw ServiceError(400, "the matrix would make an answer of about \(bytes) bytes, more than the limit of \(configuration.maxResponseBytes) (max_response_bytes); use a larger patch")
            }
        }
        let t = DispatchTime.now().uptimeNanoseconds
        let pair = try loaded.explainer.explain(a.factors, b.factors)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t) * 1e-9
        var r = ExplanationReport(pair, loaded: loaded, sources: sources, timings: ["pair_seconds": seconds])
        if pictures {
            let (pairPNG, heatPNG) = try await pool.run {
                let caption = loaded.caption(inputs: sources)
                var style = PairPictureStyle()
                style.grouping = loaded.settings.pairGrouping
                return (try Pictures.pairPicture(pair, a.display, b.display, style: style, caption: caption),
                        try Pictures.heatmapPicture(pair, a.display, b.display, caption: caption))
            }
            r.pair_png = pairPNG.base64EncodedString()
            r.heatmap_png = heatPNG.base64EncodedString()
        }
        if matrix {
            r.matrix_npy = NPY.encode(try Tensor(shape: [pair.rows, pair.columns], data: pair.relevance)).base64EncodedString()
        }
        return r
    }

    /// A batch's items: at least one, at most max_batch (the image and the text batch routes).
    func checkBatchSize(_ count: Int) throws {
        guard count > 0 else { throw ServiceError(400, "items is empty") }
        guard count <= configuration.maxBatch else {
            throw ServiceError(400, "items has \(count) entries, more than the limit of \(configuration.maxBatch) (max_batch)")
        }
    }

    /// An upper bound of a batch answer's size (each report: about 300 bytes per top pair, 4 KiB more).
    func checkBatchAnswer(items: Int, topK: Int) throws {
        let bytes = items * (2 * topK * 300 + 4096)
        guard bytes <= configuration.maxResponseBytes else {
            throw ServiceError(400, "\(items) items with top_k \(topK) would make an answer of up to \(bytes) bytes, more than the limit of \(configuration.maxResponseBytes) (max_response_bytes); send fewer items or a smaller top_k")
        }
    }

    // MARK: - Routes

    /// The HTTP routes of the service.
    public func router() -> Router<BiLRPRequestContext> {
        let router = Router(context: BiLRPRequestContext.self)
        router.add(middleware: FallbackMiddleware(service: self))
        router.get("/health") { request, context in
            await self.handle("/health", request, context, needsBody: false, authenticated: false) { _ in
                Self.json(Data("{\"status\": \"ok\"}".utf8))
            }
        }
        router.get("/ready") { request, context in
            await self.handle("/ready", request, context, needsBody: false, authenticated: false) { _ in
                // The model is loaded once the service exists; a full queue is not ready for more.
                if self.pool.queueFull {
                    return Self.json(Data("{\"status\": \"busy\", \"reason\": \"the compute queue is full\"}".utf8),
                                     status: .serviceUnavailable)
                }
                return Self.json(Data("{\"status\": \"ready\"}".utf8))
            }
        }
        router.get("/metrics") { request, context in
            await self.handle("/metrics", request, context, needsBody: false) { _ in
                self.metrics.queueDepth.record(self.pool.queueDepth)
                self.metrics.cacheEntries.record(await self.cache.count)
                self.metrics.cacheBytes.record(await self.cache.bytes)
                return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                                body: .init(byteBuffer: ByteBuffer(string: self.metrics.render())))
            }
        }
        router.get("/openapi.yaml") { request, context in
            await self.handle("/openapi.yaml", request, context, needsBody: false, authenticated: false) { _ in
                Response(status: .ok, headers: [.contentType: "application/yaml"],
                         body: .init(byteBuffer: ByteBuffer(string: try OpenAPIDocument.text())))
            }
        }
        // The viewer: static files, no token (the API calls it makes carry it).
        for (path, resource, contentType) in Viewer.files {
            router.get(RouterPath(path)) { request, context in
                await self.handle(path, request, context, needsBody: false, authenticated: false) { _ in
                    Response(status: .ok, headers: [.contentType: contentType, .cacheControl: "no-cache"],
                             body: .init(byteBuffer: ByteBuffer(string: try Viewer.file(resource))))
                }
            }
        }
        router.get("/v1/model") { request, context in
            await self.handle("/v1/model", request, context, needsBody: false) { _ in
                Self.json(try self.modelDescription())
            }
        }
        router.post("/v1/factors") { request, context in
            await self.handle("/v1/factors", request, context) { body in
                let req = try decodeRequest(FactorsRequest.self, body)
                let s = try self.settings(req.settings)
                let r = try await self.factors(image: try self.base64(req.image, "image"), field: "image", settings: s)
                let f = r.value.factors
                let norm = f.embedding.reduce(Float(0)) { $0 + $1 * $1 }.squareRoot()
                return Self.json(try Self.encode(FactorsAnswer(
                    id: r.id, cached: r.cached, outputs: f.outputs, patches: f.grid.count, patch_rows: f.grid.rows,
                    patch_columns: f.grid.columns, patch: f.grid.patch, similarity_embedding_norm: norm)))
            }
        }
        router.post("/v1/explain") { request, context in
            await self.handle("/v1/explain", request, context) { body in
                let req = try decodeRequest(ExplainRequest.self, body)
                let s = try self.settings(req.settings)
                let (a, _) = try await self.resolve(req.first, "first", s)
                let (b, _) = try await self.resolve(req.second, "second", s)
                let r = try await self.report(a, b, sources: ("first", "second"), settings: s,
                                              pictures: req.pictures ?? false, matrix: req.matrix ?? false)
                return Self.json(try r.json())
            }
        }
        router.post("/v1/explain/batch") { request, context in
            await self.handle("/v1/explain/batch", request, context) { body in
                let req = try decodeRequest(BatchRequest.self, body)
                try self.checkBatchSize(req.items.count)
                let s = try self.settings(req.settings)
                try self.checkBatchAnswer(items: req.items.count, topK: s.topK)
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
        router.post("/v1/explain/text") { request, context in
            await self.handle("/v1/explain/text", request, context) { body in
                let req = try decodeRequest(TextExplainRequest.self, body)
                return Self.json(try await self.explainText(req).json())
            }
        }
        router.post("/v1/explain/text/batch") { request, context in
            await self.handle("/v1/explain/text/batch", request, context) { body in
                let req = try decodeRequest(TextBatchRequest.self, body)
                return Self.json(try Self.encode(try await self.explainTextBatch(req)))
            }
        }
        return router
    }

    /// GET /v1/model: the loaded model, settings, limits and what a request may override (never the token).
    /// The image model's keys are there when it has one, `text` when it has a text model.
    func modelDescription() throws -> Data {
        let c = configuration
        var info: [String: Any] = [
            "version": BiLRPVersion.string,
            "limits": ["max_text_bytes": c.maxTextBytes, "max_body_bytes": c.maxBodyBytes, "max_image_pixels": c.maxImagePixels,
                       "max_batch": c.maxBatch, "max_outputs": c.maxOutputs,
                       "max_explanation_bytes": c.maxExplanationBytes, "max_response_bytes": c.maxResponseBytes,
                       "timeout_seconds": c.timeoutSeconds, "queue_limit": c.queueLimit,
                       "compute_slots": c.computeSlots, "cache_bytes": c.cacheBytes, "max_variants": c.maxVariants,
                       "max_variant_bytes": c.maxVariantBytes,
                       "max_patch": RequestSettings.maxPatch, "max_top_k": RequestSettings.maxTopK],
        ]
        if let b = image {
            info.merge([
                "source": b.source, "layers": b.graph.nodes.map(\.op.name), "nodes": b.graph.nodes.map(\.name),
                "head": b.explainer.head.description, "rules": b.explainer.composite.description,
                "similarity": b.settings.similarity, "patch": b.settings.patch, "size": b.settings.size,
                "preprocess": b.preprocessing.rawValue, "notes": b.notes,
                "overridable": ["rules", "patch", "top_k", "similarity", "head", "layer"],
                "max_layer": b.graph.chainLength,
            ]) { $1 }
        }
        if let text { info["text"] = text.description }
        return try JSONSerialization.data(withJSONObject: info, options: [.prettyPrinted, .sortedKeys])
    }
}

/// Unknown paths get a JSON 404, known paths with another method a JSON 405 with `Allow`; both
/// are counted (route `unmatched`) and logged like every other request.
struct FallbackMiddleware: RouterMiddleware {
    let service: ExplanationService

    func handle(_ request: Request, context: BiLRPRequestContext,
                next: (Request, BiLRPRequestContext) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as HTTPError where e.status == .notFound {
            let id = ExplanationService.requestID(request.headers[.requestID])
            let path = request.uri.path
            var response: Response
            if let methods = ExplanationService.routes[path] {
                let allowed = methods.map(\.rawValue).joined(separator: ", ")
                response = ExplanationService.errorResponse(
                    ServiceError(405, "\(path) does not take \(request.method.rawValue) (allowed: \(allowed))"), requestID: id)
                response.headers[.allow] = allowed
            } else {
                response = ExplanationService.errorResponse(ServiceError(404, "no route \(path) (see GET /openapi.yaml)"),
                                                            requestID: id)
            }
            response.headers[.requestID] = id
            service.finish("unmatched", request, response, id: id, seconds: 0, stats: RequestStats(), cause: nil)
            return response
        }
    }
}
