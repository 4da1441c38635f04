import BiLRP
import BiLRPIO
import BiLRPServer
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Collects log lines (JSONLogHandler's output) for assertions.
final class LogLines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func add(_ l: String) { lock.withLock { lines.append(l) } }
    var all: [String] { lock.withLock { lines } }
}

func errorText(_ b: ByteBuffer) -> String { ((try? object(b))?["error"] as? String) ?? "" }

@Suite("Server conventions: limits, strict requests, timeouts, auth, logs, connections", .serialized)
struct ConventionTests {
    @Test("the request that killed the process (h = 10^9) and the runaway identity head: 400 in milliseconds, then the server serves")
    func resourceLimits() async throws {
        let service = try ExplanationService(configuration: configuration())
        let img = try imageData("baseline.jpg").base64EncodedString()
        try await makeApp(service).test(.router) { client in
            let cases: [([String: Any], String)] = [
                (["head": "random:1000000000"], "1000000000 outputs (h)"),
                (["head": "identity", "layer": 2], "65536 outputs (h) for a feature map of [64, 32, 32], more than the limit of 4096"),
                (["head": "random:4097"], "more than the limit of 4096"),
            ]
            for (settings, message) in cases {
                try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType,
                                         body: try body(["image": img, "settings": settings])) { r in
                    #expect(r.status == .badRequest)
                    #expect(errorText(r.body).contains(message), "\(errorText(r.body))")
                }
            }
            try await client.execute(uri: "/metrics", method: .get) { r in
                #expect(String(buffer: r.body).contains("bilrp_factor_computations_total 0"), "refused before any computation")
            }
            // At the limit it is computed.
            try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType,
                                     body: try body(["image": img, "settings": ["head": "random:64"]])) { r in
                #expect(r.status == .ok)
            }
            try await client.execute(uri: "/health", method: .get) { r in #expect(r.status == .ok) }
        }
    }

    @Test("a memory limit names the estimate; the library throws the same instead of aborting")
    func memoryLimit() async throws {
        var c = configuration()
        c.maxExplanationBytes = 8 << 20
        let service = try ExplanationService(configuration: c)
        let img = try imageData("baseline.jpg").base64EncodedString()
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType,
                                     body: try body(["image": img, "settings": ["head": "random:4000"]])) { r in
                #expect(r.status == .badRequest)
                #expect(errorText(r.body).contains("more than the limit of 8 MiB"), "\(errorText(r.body))")
            }
        }
        // The library: an Explainer with limits throws limitExceeded before allocating.
        let loaded = try LoadedExplainer.load(configuration().settings)
        let ex = try Explainer(graph: loaded.graph, head: .randomProjection(outputs: 1_000_000_000, seed: 0),
                               composite: try .preset("paper-vgg"), bounds: Preprocessing.torchvision.bounds)
        let x = try loaded.input(data: try imageData("baseline.jpg"), name: "x", maxPixels: 1 << 20).tensor
        #expect { try ex.factors(x, patch: 4) } throws: { e in
            guard case let .limitExceeded(m) = e as? BiLRPError else { return false }
            return m.contains("1000000000 outputs (h)") && m.contains("more than the limit of 65536")
        }
        #expect(throws: BiLRPError.self) { try ex.embedding(x) }
    }

    @Test("a cancelled explanation stops with BiLRPError.cancelled")
    func cancellation() throws {
        let loaded = try LoadedExplainer.load(configuration().settings)
        let x = try loaded.input(data: try imageData("baseline.jpg"), name: "x", maxPixels: 1 << 20).tensor
        let c = Cancellation()
        c.cancel()
        #expect(throws: BiLRPError.cancelled) { try loaded.explainer.factors(x, patch: 4, cancellation: c) }
        // Not cancelled: the same result as without a flag.
        let a = try loaded.explainer.factors(x, patch: 4, cancellation: Cancellation())
        let b = try loaded.explainer.factors(x, patch: 4)
        #expect(a.a == b.a)
    }

    @Test("strict requests: each malformed request gets its code and a message naming the problem, then a valid one succeeds",
          arguments: [
        ("{\"image\": \"IMG\", \"settings\": {\"topk\": 3}}", "application/json", 400, "unknown field 'settings.topk'"),
        ("{\"image\": \"IMG\", \"extra\": 1}", "application/json", 400, "unknown field 'extra'"),
        ("{\"image\": \"IMG\", \"settings\": {\"patch\": 2.5}}", "application/json", 400, "settings.patch must be an integer"),
        ("{\"image\": \"IMG\", \"settings\": {\"patch\": 0}}", "application/json", 400, "settings.patch must be in 1...64 (got 0)"),
        ("{\"image\": \"IMG\", \"settings\": {\"top_k\": 1001}}", "application/json", 400, "settings.top_k must be in 0...1000"),
        ("{\"image\": \"IMG\", \"settings\": {\"similarity\": \"euclid\"}}", "application/json", 400, "settings.similarity must be dot or cosine"),
        ("{\"image\": \"IMG\", \"settings\": {\"head\": \"random:x\"}}", "application/json", 400, "settings.head: head 'random:x'"),
        ("{\"image\": \"IMG\"}", "text/plain", 415, "the body must be JSON"),
        ("{\"image\": \"IMG\"}", "", 415, "no Content-Type"),
        ("{\"image\": \"QUJD\"}", "application/json", 400, "image: cannot decode image"),
    ])
    func strict(json: String, type: String, status: Int, message: String) async throws {
        let service = try ExplanationService(configuration: configuration())
        let img = try imageData("baseline.jpg").base64EncodedString()
        try await makeApp(service).test(.router) { client in
            let headers: HTTPFields = type.isEmpty ? [:] : [.contentType: type]
            try await client.execute(uri: "/v1/factors", method: .post, headers: headers,
                                     body: ByteBuffer(string: json.replacingOccurrences(of: "IMG", with: img))) { r in
                #expect(Int(r.status.code) == status)
                let o = try object(r.body)
                #expect((o["error"] as? String ?? "").contains(message), "\(o)")
                #expect(o["status"] as? Int == status && o["request_id"] as? String == r.headers[.init("X-Request-Id")!])
            }
            try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType, body: try body(["image": img])) { r in
                #expect(r.status == .ok)
            }
        }
    }

    @Test("unknown routes are a JSON 404, wrong methods a JSON 405 with Allow; both counted")
    func routes() async throws {
        let service = try ExplanationService(configuration: configuration())
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/v1/factors", method: .get) { r in
                #expect(r.status == .methodNotAllowed && r.headers[.allow] == "POST")
                #expect(errorText(r.body).contains("/v1/factors does not take GET"))
            }
            try await client.execute(uri: "/nope", method: .get) { r in
                #expect(r.status == .notFound)
                #expect(errorText(r.body).contains("no route /nope"))
            }
            try await client.execute(uri: "/metrics", method: .get) { r in
                let text = String(buffer: r.body)
                #expect(text.contains("bilrp_requests_total{route=\"unmatched\",code=\"405\"} 1"), "\(text)")
                #expect(text.contains("bilrp_requests_total{route=\"unmatched\",code=\"404\"} 1"))
                #expect(!text.contains("route=\"/metrics\""), "scrapes are not traffic")
                #expect(text.contains("bilrp_build_info{version=\"\(BiLRPVersion.string)\"}"))
            }
            try await client.execute(uri: "/ready", method: .get) { r in #expect(r.status == .ok) }
            try await client.execute(uri: "/openapi.yaml", method: .get) { r in
                let text = String(buffer: r.body)
                #expect(text.hasPrefix("openapi: 3.1.0") && text.contains("version: \"\(BiLRPVersion.string)\""),
                        "the document is served as is and names this version")
            }
        }
    }

    @Test("factor ids with other settings than they were computed with: 409 naming the difference")
    func factorSettingsConflict() async throws {
        let service = try ExplanationService(configuration: configuration())
        let img = try imageData("baseline.jpg").base64EncodedString()
        try await makeApp(service).test(.router) { client in
            var id = ""
            try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType, body: try body(["image": img])) { r in
                id = try object(r.body)["id"] as! String
            }
            for (settings, message) in [(["rules": "hp"], "rules paper-vgg (asked: hp)"), (["layer": 5], "layer 10 (asked: 5)"),
                                        (["head": "random:4:1"], "head random:8:3 (asked: random:4:1)"), (["patch": 8], "patch 4 (asked: 8)")] as [([String: Any], String)] {
                try await client.execute(uri: "/v1/explain", method: .post, headers: jsonType, body: try body([
                    "first": ["factors": id], "second": ["factors": id], "settings": settings])) { r in
                    #expect(r.status == .conflict)
                    #expect(errorText(r.body).contains(message), "\(errorText(r.body))")
                }
            }
            // Same settings (top_k and similarity do not change the factors): answered.
            try await client.execute(uri: "/v1/explain", method: .post, headers: jsonType, body: try body([
                "first": ["factors": id], "second": ["factors": id], "settings": ["top_k": 2, "similarity": "cosine"]])) { r in
                #expect(r.status == .ok)
            }
        }
    }

    /// A metric's value in the Prometheus text of /metrics.
    func metric(_ name: String, _ client: some TestClientProtocol) async throws -> Double {
        try await client.execute(uri: "/metrics", method: .get) { r in
            let line = String(buffer: r.body).split(separator: "\n").first { $0.hasPrefix(name + " ") }
            return Double(line?.split(separator: " ").last ?? "") ?? -1
        }
    }

    /// POST /v1/factors with an image (base64) and settings (JSON text); expects 200.
    static func factors(_ img: String, _ settings: String, _ client: some TestClientProtocol) async throws {
        let json = "{\"image\": \"\(img)\", \"settings\": \(settings)}"
        try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType, body: ByteBuffer(string: json)) { r in
            #expect(r.status == .ok, "\(settings): \(errorText(r.body))")
        }
    }

    @Test("explainer variants are bounded in memory: the least recently used is evicted, the bytes are in /metrics")
    func variantMemory() async throws {
        let img = try imageData("baseline.jpg").base64EncodedString()
        let (a, b) = ("{\"layer\": 5}", "{\"head\": \"random:4:1\"}")
        // The bytes of each variant (weights in their prepared forms, the drawn head), from a
        // server with room for both.
        let (sizeA, sizeB) = try await makeApp(try ExplanationService(configuration: configuration())).test(.router) {
            client in
            try await Self.factors(img, a, client)
            let sizeA = try await metric("bilrp_explainer_variant_bytes", client)
            try await Self.factors(img, b, client)
            let both = try await metric("bilrp_explainer_variant_bytes", client)
            #expect(try await metric("bilrp_explainers", client) == 3)
            return (sizeA, both - sizeA)
        }
        #expect(sizeA > 0 && sizeB > 0)
        // Room for either, not both: each use of the other evicts the one kept, and it is built again.
        var c = configuration()
        c.maxVariantBytes = Int(sizeA + sizeB) - 1
        try await makeApp(try ExplanationService(configuration: c)).test(.router) { client in
            try await Self.factors(img, a, client)
            try await Self.factors(img, b, client)
            #expect(try await metric("bilrp_explainer_variant_bytes", client) == sizeB)
            #expect(try await metric("bilrp_explainers", client) == 2)
            try await Self.factors(img, a, client)  // the same image and settings: cached factors, no build
            #expect(try await metric("bilrp_explainer_builds_total", client) == 2)
            try await Self.factors(img, "{\"layer\": 5, \"patch\": 8}", client)  // new factors: A built again
            #expect(try await metric("bilrp_explainer_builds_total", client) == 3)
            #expect(try await metric("bilrp_explainer_variant_bytes", client) == sizeA)
        }
    }

    /// Wall-clock tests: `make test` runs them in a process of their own (BILRP_SERVER_TIMING=1),
    /// where no synchronous engine test holds the cooperative threads the server's tasks need.
    static let timing = ProcessInfo.processInfo.environment["BILRP_SERVER_TIMING"] == "1"

    @Test("a request over a 1 s timeout answers 503 in under 1.5 s, and its computation stops: the next request is served at once",
          .enabled(if: timing))
    func timeoutHolds() async throws {
        var c = configuration()
        c.settings.size = 128
        c.timeoutSeconds = 1
        let service = try ExplanationService(configuration: c)
        // h = 1000 at 128 x 128: drawing the 1000 x 131072 Gaussian head alone takes seconds
        // (checked before every row), the explanation far longer. A small one takes about 0.2 s.
        let quick = [501, 502].map { try! body(["image": try! pngImage(seed: $0, size: 64).base64EncodedString()]) }
        let slow = try body(["image": try pngImage(seed: 500, size: 64).base64EncodedString(),
                             "settings": ["head": "random:1000"]])
        try await makeApp(service).test(.router) { client in
            // Warm: the loaded explainer's head for this input size is drawn once.
            try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType, body: quick[0]) { r in
                #expect(r.status == .ok)
            }
            let t0 = Date()
            try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType, body: slow) { r in
                #expect(r.status == .serviceUnavailable)
                #expect(errorText(r.body).contains("longer than the limit of 1.0 s"))
            }
            let first = Date().timeIntervalSince(t0)
            #expect(first < 1.5, "answered \(first) s after the start (timeout 1 s)")
            // The slot is free within a row of the head: a small explanation fits in its own 1 s.
            try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType, body: quick[1]) { r in
                #expect(r.status == .ok, "the cancelled computation still held the slot")
            }
        }
    }

    @Test("a client that disconnects: its computation stops (499 in the log) and the next request is served at once",
          .enabled(if: timing))
    func disconnect() async throws {
        var c = configuration()
        c.settings.size = 256
        c.timeoutSeconds = 60
        let lines = LogLines()
        let logger = Logger(label: "bilrp") { JSONLogHandler(label: $0, write: { lines.add($0) }) }
        let service = try ExplanationService(configuration: c, logger: logger)
        try await BiLRPServer.application(service).test(.live) { client in
            let port = try #require(client.port)
            // A request whose explanation takes far longer than the test (h = 400 at 256 x 256).
            let payload = "{\"image\": \"\(try pngImage(seed: 600, size: 64).base64EncodedString())\", \"settings\": {\"head\": \"random:400\"}}"
            let fd = connectLoopback(port)
            let head = "POST /v1/factors HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(payload.utf8.count)\r\n\r\n"
            _ = (head + payload).withCString { send(fd, $0, strlen($0), 0) }
            try await Task.sleep(nanoseconds: 1_000_000_000)
            close(fd)
            try await Task.sleep(nanoseconds: 200_000_000)
            // The slot is free again: a small explanation is answered well inside its timeout.
            let t = Date()
            try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType,
                                     body: try body(["image": try pngImage(seed: 601, size: 64).base64EncodedString()])) { r in
                #expect(r.status == .ok)
            }
            #expect(Date().timeIntervalSince(t) < 5, "the abandoned computation held the slot")
        }
        #expect(lines.all.contains { $0.contains("\"status\":499") }, "\(lines.all)")
    }

    @Test("the bearer token: scheme case-insensitive, WWW-Authenticate on 401, never shown in /v1/model")
    func token() async throws {
        let service = try ExplanationService(configuration: configuration(token: "s3cret-token"))
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/v1/model", method: .get, headers: [.authorization: "bearer s3cret-token"]) { r in
                #expect(r.status == .ok)
                #expect(!String(buffer: r.body).contains("s3cret"))
            }
            for h in ["Bearer s3cret-toke", "Bearer s3cret-tokenX", "Basic s3cret-token", "s3cret-token"] {
                try await client.execute(uri: "/v1/model", method: .get, headers: [.authorization: h]) { r in
                    #expect(r.status == .unauthorized, "\(h)")
                    #expect(r.headers[.wwwAuthenticate] == "Bearer realm=\"bilrp\"")
                }
            }
        }
    }

    @Test("logs: one JSON line per request with the documented fields; an incoming X-Request-Id round-trips")
    func logs() async throws {
        let lines = LogLines()
        let logger = Logger(label: "bilrp") { JSONLogHandler(label: $0, write: { lines.add($0) }) }
        let service = try ExplanationService(configuration: configuration(), logger: logger)
        let img = try imageData("baseline.jpg").base64EncodedString()
        try await makeApp(service).test(.router) { client in
            var headers = jsonType
            headers[.init("X-Request-Id")!] = "trace-42.a"
            try await client.execute(uri: "/v1/factors", method: .post, headers: headers, body: try body(["image": img])) { r in
                #expect(r.status == .ok && r.headers[.init("X-Request-Id")!] == "trace-42.a")
            }
            try await client.execute(uri: "/health", method: .get, headers: [.init("X-Request-Id")!: "bad id with spaces"]) { r in
                #expect(r.headers[.init("X-Request-Id")!] != "bad id with spaces")
            }
        }
        let objects = lines.all.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(objects.count == lines.all.count && objects.count == 2, "\(lines.all)")
        let line = try #require(objects.first { $0["request_id"] as? String == "trace-42.a" })
        for key in ["time", "level", "message", "route", "method", "status", "bytes", "seconds", "queue_wait_seconds",
                    "compute_seconds", "cache_hit"] {
            #expect(line[key] != nil, "\(key)")
        }
        #expect(line["route"] as? String == "/v1/factors" && line["status"] as? Int == 200 && line["cache_hit"] as? Bool == false)
        #expect((line["compute_seconds"] as? Double ?? 0) > 0)
    }

    @Test("multipart: quoted and case-insensitive parameters, filename*, pictures must be true or false")
    func multipartParameters() async throws {
        let (media, p) = Multipart.parameters("form-data; NAME=\"first\"; filename=\"a;b.jpg\"; filename*=UTF-8''%C3%A9t%C3%A9.jpg")
        #expect(media == "form-data" && p["name"] == "first" && p["filename"] == "été.jpg")
        #expect(Multipart.boundary(contentType: "Multipart/Form-Data; Boundary=\"x y\"") == "x y")
        let service = try ExplanationService(configuration: configuration())
        let boundary = "b0undary"
        let a = try imageData("baseline.jpg")
        var form = Data("--\(boundary)\r\ncontent-disposition: form-data; name=\"first\"; filename=\"a.jpg\"\r\n\r\n".utf8) + a
        form += Data("\r\n--\(boundary)\r\nContent-Disposition: form-data; name=\"second\"; filename=\"b.jpg\"\r\n\r\n".utf8) + a
        form += Data("\r\n--\(boundary)\r\nContent-Disposition: form-data; name=\"pictures\"\r\n\r\nmaybe\r\n--\(boundary)--\r\n".utf8)
        let sent = form
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/v1/explain", method: .post,
                                     headers: [.contentType: "multipart/form-data; boundary=\(boundary)"], body: ByteBuffer(bytes: sent)) { r in
                #expect(r.status == .badRequest)
                #expect(errorText(r.body).contains("the pictures part must be true or false (got 'maybe')"))
            }
        }
    }

    @Test("a partial --config file fills the rest from the defaults; an unknown key is an error naming it")
    func config() throws {
        let c = try JSONDecoder().decode(ServerConfiguration.self, from: Data("{\"settings\": {\"patch\": 16}, \"max_batch\": 3}".utf8))
        #expect(c.settings.patch == 16 && c.settings.model == ExplanationSettings.serverDefault.model && c.settings.layer == 31)
        #expect(c.maxBatch == 3 && c.port == 8080 && c.maxOutputs == 4096)
        #expect { try JSONDecoder().decode(ServerConfiguration.self, from: Data("{\"settings\": {\"topk\": 3}}".utf8)) } throws: {
            "\($0)".contains("unknown field 'settings.topk'")
        }
        #expect { try JSONDecoder().decode(ServerConfiguration.self, from: Data("{\"max_bach\": 3}".utf8)) } throws: {
            "\($0)".contains("unknown field 'max_bach'")
        }
        var bad = ServerConfiguration()
        bad.logFormat = "xml"
        #expect { try bad.validate() } throws: { "\($0)".contains("log_format must be text, json or off") }
    }

    @Test("slow clients: half-sent requests and idle connections are closed by the deadlines; /health answers throughout", .enabled(if: timing))
    func slowClients() async throws {
        var c = configuration()
        c.headerTimeoutSeconds = 1
        c.idleTimeoutSeconds = 1
        c.bodyTimeoutSeconds = 1
        let service = try ExplanationService(configuration: c)
        try await BiLRPServer.application(service).test(.live) { client in
            _ = client
            let port = try #require(client.port)
            // 40 connections: half send a partial header, half a header and part of the body, one byte at a time.
            var sockets: [Int32] = []
            for i in 0..<40 {
                let fd = connectLoopback(port)
                #expect(fd >= 0)
                let text = i % 2 == 0 ? "POST /v1/factors HTTP/1.1\r\nHost: x\r\n"
                    : "POST /v1/factors HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"im"
                _ = text.withCString { send(fd, $0, strlen($0), 0) }
                sockets.append(fd)
            }
            #expect(rawGet(port: port, "/health").hasPrefix("HTTP/1.1 200"))
            // Trickle a byte a connection every 0.5 s: the deadlines do not move.
            for _ in 0..<5 {
                try await Task.sleep(nanoseconds: 500_000_000)
                for fd in sockets { _ = send(fd, "a", 1, Int32(MSG_NOSIGNAL)) }
            }
            var closed = 0
            for fd in sockets {
                var tv = timeval(tv_sec: 2, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                var buf = [UInt8](repeating: 0, count: 4096)
                var n = recv(fd, &buf, buf.count, 0)
                while n > 0 { n = recv(fd, &buf, buf.count, 0) }  // a 4xx answer, then the close
                if n == 0 { closed += 1 }
                close(fd)
            }
            #expect(closed == sockets.count, "\(closed) of \(sockets.count) slow connections closed")
            // (The test client's own kept-alive connection was idle too and is closed: a new one answers.)
            #expect(rawGet(port: port, "/health").hasPrefix("HTTP/1.1 200"))
        }
    }
}

func connectLoopback(_ port: Int) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return fd
}

/// A GET on a new connection; the whole answer as text.
func rawGet(port: Int, _ path: String) -> String {
    let fd = connectLoopback(port)
    defer { close(fd) }
    _ = "GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".withCString { send(fd, $0, strlen($0), 0) }
    var tv = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var out = [UInt8](), buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = recv(fd, &buf, buf.count, 0)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}
