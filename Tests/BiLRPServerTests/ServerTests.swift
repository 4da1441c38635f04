import BiLRP
import BiLRPIO
import BiLRPServer
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

/// The engine tests' fixtures, by source path (no second copy in the repository).
let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("BiLRPTests/Fixtures")

func configuration(token: String? = nil, queue: Int = 16, maxBatch: Int = 3) -> ServerConfiguration {
    var s = ExplanationSettings()
    s.weights = fixtures.appendingPathComponent("vgg16_l10.safetensors").path
    s.layer = 10; s.size = 32; s.patch = 4; s.head = "random:8:3"; s.preprocess = "torchvision"; s.topK = 3
    var c = ServerConfiguration(settings: s)
    c.port = 0
    c.token = token
    c.maxBodyBytes = 1 << 20
    c.maxImagePixels = 1_000_000
    c.maxBatch = maxBatch
    c.queueLimit = queue
    c.logFormat = "off"  // the log tests capture their own lines
    return c
}

func imageData(_ name: String) throws -> Data { try Data(contentsOf: fixtures.appendingPathComponent("images/" + name)) }

/// A distinct PNG per seed.
func pngImage(seed: UInt64, size: Int = 40) throws -> Data {
    var r = SplitMix64(seed: seed)
    return try RGBImage(width: size, height: size, pixels: (0..<(size * size * 3)).map { _ in Float(r.nextUniform()) }).pngData()
}

func body(_ object: [String: Any]) throws -> ByteBuffer {
    ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: object))
}

func object(_ b: ByteBuffer) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(b.readableBytesView)) as? [String: Any] ?? [:]
}

/// JSON bodies must say so (a text/plain body is a 415).
let jsonType: HTTPFields = [.contentType: "application/json"]

func makeApp(_ service: ExplanationService) -> some ApplicationProtocol {
    Application(router: service.router())
}

@Suite("The explanation server")
struct ServerTests {
    @Test("health, model, explain with images: the same R as the library, and the CLI's NPY bytes")
    func explain() async throws {
        let service = try ExplanationService(configuration: configuration())
        let a = try imageData("baseline.jpg"), b = try imageData("progressive.jpg")
        // The library (and so the CLI, see CLITests) with the same settings.
        let loaded = try LoadedExplainer.load(configuration().settings)
        let pair = try loaded.explainer.explain(try loaded.input(data: a, name: "a", maxPixels: 1 << 20).tensor,
                                                try loaded.input(data: b, name: "b", maxPixels: 1 << 20).tensor, patch: 4)
        let expectedNPY = NPY.encode(try Tensor(shape: [pair.rows, pair.columns], data: pair.relevance))
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/health", method: .get) { r in #expect(r.status == .ok) }
            try await client.execute(uri: "/v1/model", method: .get) { r in
                #expect(r.status == .ok)
                try #expect((object(r.body)["layers"] as? [String])?.count == 10)
            }
            let req = try body(["first": ["image": a.base64EncodedString()], "second": ["image": b.base64EncodedString()],
                                "matrix": true, "pictures": true])
            try await client.execute(uri: "/v1/explain", method: .post, headers: jsonType, body: req) { r in
                #expect(r.status == .ok)
                let o = try object(r.body)
                #expect(Data(base64Encoded: o["matrix_npy"] as! String) == expectedNPY, "byte-identical R")
                #expect(abs((o["similarity"] as! Double) - Double(pair.similarity)) <= 1e-6 * abs(Double(pair.similarity)))
                #expect((o["top_positive"] as! [Any]).count == 3)
                let png = try RGBImage.decode(Data(base64Encoded: o["pair_png"] as! String)!)
                #expect(png.width > 64)
                #expect(o["heatmap_png"] != nil && o["conservation"] != nil)
            }
        }
    }

    @Test("the tables model by name (\"model\": \"tables\"): its defaults, pages as they are, y as the library's, top pairs naming their bigram")
    func tables() async throws {
        let weights = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models/tables/tables.safetensors").path
        let json = try JSONSerialization.data(withJSONObject: ["settings": ["model": "tables", "weights": weights, "top_k": 4]])
        var c = try JSONDecoder().decode(ServerConfiguration.self, from: json)
        #expect(c.settings.arch == "tables" && c.settings.preprocess == "ink" && c.settings.size == 0 && c.settings.head == "identity")
        #expect(c.settings.rules == "tables" && c.settings.layer == nil && c.settings.model == nil && c.settings.topK == 4)
        c.port = 0; c.logFormat = "off"
        let service = try ExplanationService(configuration: c)
        let a = try Data(contentsOf: fixtures.appendingPathComponent("tables/page_a.png"))
        let b = try Data(contentsOf: fixtures.appendingPathComponent("tables/page_b.png"))
        let loaded = try LoadedExplainer.load(c.settings)
        let pair = try loaded.explainer.explain(try loaded.input(data: a, name: "a", maxPixels: 1 << 22).tensor,
                                                try loaded.input(data: b, name: "b", maxPixels: 1 << 22).tensor, patch: 8)
        try await makeApp(service).test(.router) { client in
            let req = try body(["first": ["image": a.base64EncodedString()], "second": ["image": b.base64EncodedString()]])
            try await client.execute(uri: "/v1/explain", method: .post, headers: jsonType, body: req) { r in
                #expect(r.status == .ok)
                let o = try object(r.body)
                #expect(abs((o["similarity"] as! Double) - Double(pair.similarity)) <= 1e-6 * abs(Double(pair.similarity)))
                let top = try #require(o["top_positive"] as? [[String: Any]])
                #expect(top.count == 4)
                let first = try #require(top[0]["first"] as? [String: Any]), second = try #require(top[0]["second"] as? [String: Any])
                let d = pair.dominantOutput(first["index"] as! Int, second["index"] as! Int)
                #expect(top[0]["bigram"] as? String == "\(d.output / 10)\(d.output % 10)")
            }
        }
    }

    @Test("factor ids: explain from cached factors, cache hits and computations counted")
    func factorsAndCache() async throws {
        let service = try ExplanationService(configuration: configuration())
        let a = try imageData("baseline.jpg"), b = try imageData("progressive.jpg")
        try await makeApp(service).test(.router) { client in
            var ids: [String] = []
            for img in [a, b] {
                try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType, body: try body(["image": img.base64EncodedString()])) { r in
                    #expect(r.status == .ok)
                    let o = try object(r.body)
                    #expect(o["cached"] as? Bool == false && o["patches"] as? Int == 64)
                    ids.append(o["id"] as! String)
                }
            }
            var fromImages: String = "", fromIDs: String = ""
            try await client.execute(uri: "/v1/explain", method: .post, headers: jsonType, body: try body([
                "first": ["image": a.base64EncodedString()], "second": ["image": b.base64EncodedString()], "matrix": true])) { r in
                fromImages = try object(r.body)["matrix_npy"] as! String
            }
            try await client.execute(uri: "/v1/explain", method: .post, headers: jsonType, body: try body([
                "first": ["factors": ids[0]], "second": ["factors": ids[1]], "matrix": true])) { r in
                #expect(r.status == .ok)
                fromIDs = try object(r.body)["matrix_npy"] as! String
            }
            #expect(fromImages == fromIDs)
            try await client.execute(uri: "/metrics", method: .get) { r in
                let text = String(buffer: r.body)
                #expect(text.contains("bilrp_factor_computations_total 2"), "\(text)")
                #expect(text.contains("bilrp_cache_hits_total 4"), "two image lookups and two factor-id lookups")
                #expect(text.contains("bilrp_requests_total{route=\"/v1/explain\",code=\"200\"} 2"))
            }
        }
    }

    @Test("equal uncached requests arriving together compute once")
    func deduplication() async throws {
        let service = try ExplanationService(configuration: configuration())
        let img = try pngImage(seed: 77).base64EncodedString()
        try await makeApp(service).test(.router) { client in
            try await withThrowingTaskGroup(of: Void.self) { g in
                for _ in 0..<4 {
                    g.addTask {
                        try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType, body: try body(["image": img])) { r in
                            #expect(r.status == .ok)
                        }
                    }
                }
                try await g.waitForAll()
            }
            try await client.execute(uri: "/metrics", method: .get) { r in
                #expect(String(buffer: r.body).contains("bilrp_factor_computations_total 1"))
            }
        }
    }

    @Test("batch: one query against items; over the limit is a 400")
    func batch() async throws {
        let service = try ExplanationService(configuration: configuration())
        let q = try imageData("baseline.jpg").base64EncodedString()
        let items = try (0..<2).map { ["image": try pngImage(seed: UInt64(10 + $0)).base64EncodedString()] }
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/v1/explain/batch", method: .post, headers: jsonType, body: try body(["query": ["image": q], "items": items])) { r in
                #expect(r.status == .ok)
                try #expect((object(r.body)["results"] as? [Any])?.count == 2)
            }
            let many = Array(repeating: ["image": q], count: 4)
            try await client.execute(uri: "/v1/explain/batch", method: .post, headers: jsonType, body: try body(["query": ["image": q], "items": many])) { r in
                #expect(r.status == .badRequest)
                try #expect((object(r.body)["error"] as? String)?.contains("more than the limit of 3") == true)
            }
        }
    }

    @Test("bad input: a 4xx JSON error naming the problem", arguments: [
        ("{\"first\": {\"image\": \"!!!\"}, \"second\": {\"image\": \"QUJD\"}}", 400, "first.image is not valid base64"),
        ("{\"first\": {\"image\": \"iVBORw0KGgoAAAAN\"}, \"second\": {\"image\": \"QUJD\"}}", 400, "cannot decode image"),
        ("{\"first\": 5, \"second\": {}}", 400, "first has the wrong type"),
        ("{\"second\": {}}", 400, "missing field 'first'"),
        ("{\"first\": {}, \"second\": {}}", 400, "first needs exactly one of 'image'"),
        ("{\"first\": {\"factors\": \"abc\"}, \"second\": {\"factors\": \"abc\"}}", 404, "unknown factor id 'abc'"),
        ("{\"first\": {\"factors\": \"x\"}, \"second\": {\"factors\": \"y\"}, \"settings\": {\"rules\": \"nope\"}}", 400, "unknown rule preset 'nope'"),
        ("{\"first\": {\"factors\": \"x\"}, \"second\": {\"factors\": \"y\"}, \"settings\": {\"layer\": 40}}", 400, "settings.layer must be in 1...10"),
        ("{\"first\": {\"factors\": \"x\"}, \"second\": {\"factors\": \"y\"}, \"settings\": {\"patch\": \"8\"}}", 400, "settings.patch has the wrong type"),
        ("{\"first\": {\"factors\": \"x\"}, \"second\": {\"factors\": \"y\"}, \"settings\": {\"layer\": \"layer4\"}}", 400, "settings.layer: the loaded model has no node named 'layer4'"),
        ("not json", 400, "malformed JSON"),
    ])
    func badInput(json: String, status: Int, message: String) async throws {
        let service = try ExplanationService(configuration: configuration())
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/v1/explain", method: .post, headers: jsonType, body: ByteBuffer(string: json)) { r in
                #expect(Int(r.status.code) == status)
                let e = try object(r.body)["error"] as? String ?? ""
                #expect(e.contains(message), "\(e)")
            }
        }
    }

    @Test("settings.layer by node name: the cut the library makes at that node")
    func layerByName() async throws {
        let service = try ExplanationService(configuration: configuration())
        let img = try imageData("baseline.jpg")
        var s = configuration().settings
        s.layer = "6"  // node 6 of the chain: layers [0, 7)
        let loaded = try LoadedExplainer.load(s)
        let ours = try loaded.explainer.factors(try loaded.input(data: img, name: "x", maxPixels: 1 << 20).tensor, patch: 4)
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/v1/model", method: .get) { r in
                let m = try object(r.body)
                #expect((m["nodes"] as? [String])?.count == 10 && m["max_layer"] as? Int == 10)
            }
            try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType,
                                     body: try body(["image": img.base64EncodedString(), "settings": ["layer": "6"]])) { r in
                #expect(r.status == .ok)
                let o = try object(r.body)
                #expect(o["outputs"] as? Int == ours.outputs && o["patches"] as? Int == ours.grid.count)
                let norm = ours.embedding.reduce(0) { $0 + Double($1) * Double($1) }.squareRoot()
                let served = o["similarity_embedding_norm"] as? Double ?? -1
                #expect(abs(served - norm) <= 1e-5 * norm, "\(served) vs \(norm)")
            }
        }
    }

    @Test("limits and token: 413, pixel limit, 401")
    func limits() async throws {
        let service = try ExplanationService(configuration: configuration(token: "s3cret"))
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/v1/model", method: .get) { r in #expect(r.status == .unauthorized) }
            try await client.execute(uri: "/health", method: .get) { r in #expect(r.status == .ok) }
            let auth: HTTPFields = [.authorization: "Bearer s3cret", .contentType: "application/json"]
            try await client.execute(uri: "/v1/model", method: .get, headers: auth) { r in #expect(r.status == .ok) }
            let big = ByteBuffer(repeating: UInt8(ascii: "a"), count: (1 << 20) + 10)
            try await client.execute(uri: "/v1/factors", method: .post, headers: auth, body: big) { r in
                #expect(r.status == .contentTooLarge)
            }
            // A valid PNG header (CRC fixed) announcing 50115 x 50115 pixels is refused before decoding.
            var png = try pngImage(seed: 1)
            for i in 16..<24 { png[i] = i % 4 < 2 ? 0 : 0xC3 }
            let crc = crc32(png[12..<29])
            for k in 0..<4 { png[29 + k] = UInt8(truncatingIfNeeded: crc >> (24 - 8 * UInt32(k))) }
            try await client.execute(uri: "/v1/factors", method: .post, headers: auth, body: try body(["image": png.base64EncodedString()])) { r in
                #expect(r.status == .badRequest)
                try #expect((object(r.body)["error"] as? String)?.contains("more than the limit of 1000000 pixels") == true)
            }
        }
    }

    @Test("a full queue answers 429 with Retry-After, and the server keeps serving")
    func queueFull() async throws {
        // One slot, no queue, 128 x 128 inputs: a computation takes long enough that most of the
        // eight concurrent requests find the slot busy.
        var c = configuration(queue: 0)
        c.settings.size = 128
        let service = try ExplanationService(configuration: c)
        try await makeApp(service).test(.router) { client in
            var statuses: [Int] = []
            try await withThrowingTaskGroup(of: (Int, String?).self) { g in
                for i in 0..<8 {
                    g.addTask {
                        let img = try pngImage(seed: UInt64(100 + i), size: 128).base64EncodedString()
                        return try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType, body: try body(["image": img])) { r in
                            (Int(r.status.code), r.headers[.retryAfter])
                        }
                    }
                }
                for try await (s, retry) in g {
                    statuses.append(s)
                    if s == 429 { #expect(retry != nil) }
                }
            }
            #expect(statuses.contains(429) && statuses.contains(200), "\(statuses)")
            try await client.execute(uri: "/health", method: .get) { r in #expect(r.status == .ok) }
        }
    }

    @Test("a few hundred malformed bodies, then the server still answers correctly")
    func fuzz() async throws {
        let service = try ExplanationService(configuration: configuration())
        var r = SplitMix64(seed: 2026)
        let good = try imageData("baseline.jpg")
        var bodies: [ByteBuffer] = []
        for i in 0..<300 {
            switch i % 5 {
            case 0: bodies.append(ByteBuffer(bytes: (0..<Int(r.next() % 300)).map { _ in UInt8(truncatingIfNeeded: r.next()) }))
            case 1:  // truncated base64 of a real image
                let s = good.base64EncodedString()
                bodies.append(try body(["image": String(s.prefix(Int(r.next() % UInt64(s.count))))]))
            case 2:  // a PNG whose header announces huge or zero dimensions
                var png = try pngImage(seed: UInt64(i))
                for k in 16..<24 { png[k] = UInt8(truncatingIfNeeded: r.next()) }
                bodies.append(try body(["image": png.base64EncodedString()]))
            case 3:  // wrong JSON types
                let values: [Any] = [5, "x", [1, 2], ["image": 3], NSNull(), true]
                bodies.append(try body(["image": values[i % values.count], "settings": ["patch": values[(i / 5) % values.count]]]))
            default:  // damaged image bytes
                var d = good
                for _ in 0..<8 { let k = Int(r.next() % UInt64(d.count)); d[k] ^= UInt8(truncatingIfNeeded: r.next() | 1) }
                bodies.append(try body(["image": d.base64EncodedString()]))
            }
        }
        let all = bodies
        try await makeApp(service).test(.router) { client in
            for b in all {
                for uri in ["/v1/factors", "/v1/explain"] {
                    try await client.execute(uri: uri, method: .post, headers: jsonType, body: b) { resp in
                        #expect(resp.status.code < 500 || resp.status.code == 503, "\(uri): \(resp.status)")
                    }
                }
            }
            try await client.execute(uri: "/v1/factors", method: .post, headers: jsonType, body: try body(["image": good.base64EncodedString()])) { resp in
                #expect(resp.status == .ok)
            }
            try await client.execute(uri: "/metrics", method: .get) { resp in
                #expect(String(buffer: resp.body).contains("bilrp_requests_total{route=\"/v1/factors\",code=\"400\"}"))
            }
        }
    }

    @Test("multipart form parts give the same answer as base64 JSON; malformed multipart is a 400")
    func multipart() async throws {
        let service = try ExplanationService(configuration: configuration())
        let a = try imageData("baseline.jpg"), b = try imageData("progressive.jpg")
        let boundary = "XyZ-boundary-123"
        func part(_ name: String, _ filename: String?, _ data: Data) -> Data {
            var d = Data("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(name)\"".utf8)
            if let filename { d += Data("; filename=\"\(filename)\"\r\nContent-Type: application/octet-stream".utf8) }
            d += Data("\r\n\r\n".utf8) + data + Data("\r\n".utf8)
            return d
        }
        let form = part("first", "a.jpg", a) + part("second", "b.jpg", b) + part("matrix", nil, Data("true".utf8))
            + part("settings", nil, Data("{\"top_k\": 2}".utf8)) + Data("--\(boundary)--\r\n".utf8)
        let headers: HTTPFields = [.contentType: "multipart/form-data; boundary=\(boundary)"]
        try await makeApp(service).test(.router) { client in
            var viaForm = "", viaJSON = ""
            try await client.execute(uri: "/v1/explain", method: .post, headers: headers, body: ByteBuffer(bytes: form)) { r in
                #expect(r.status == .ok)
                let o = try object(r.body)
                viaForm = o["matrix_npy"] as? String ?? ""
                #expect((o["top_positive"] as? [Any])?.count == 2)
            }
            try await client.execute(uri: "/v1/explain", method: .post, headers: jsonType, body: try body([
                "first": ["image": a.base64EncodedString()], "second": ["image": b.base64EncodedString()], "matrix": true])) { r in
                viaJSON = try object(r.body)["matrix_npy"] as? String ?? ""
            }
            #expect(!viaForm.isEmpty && viaForm == viaJSON)
            try await client.execute(uri: "/v1/explain", method: .post, headers: headers,
                                     body: ByteBuffer(bytes: form.prefix(form.count / 2))) { r in
                #expect(r.status == .badRequest)
                try #expect((object(r.body)["error"] as? String)?.contains("multipart") == true)
            }
        }
    }

    @Test("live: a real HTTP server on loopback answers and explains")
    func live() async throws {
        let service = try ExplanationService(configuration: configuration())
        let a = try imageData("baseline.jpg").base64EncodedString()
        try await makeApp(service).test(.live) { client in
            try await client.execute(uri: "/health", method: .get) { r in #expect(r.status == .ok) }
            try await client.execute(uri: "/v1/explain", method: .post, headers: jsonType, body: try body(["first": ["image": a], "second": ["image": a]])) { r in
                #expect(r.status == .ok)
                let c = try object(r.body)["conservation"] as? [String: Any]
                #expect(c?["relevance_sum"] != nil)
            }
        }
    }
}


/// CRC-32 (PNG chunks), to build a well-formed header in a test.
func crc32(_ bytes: Data) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        c ^= UInt32(b)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    }
    return c ^ 0xFFFF_FFFF
}
