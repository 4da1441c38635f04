import BiLRP
import BiLRPIO
import BiLRPServer
import BiLRPText
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

/// The fetched all-MiniLM-L6-v2 (make assets), by source path.
let miniLM = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("assets/models/all-MiniLM-L6-v2").path
let haveMiniLM = FileManager.default.fileExists(atPath: miniLM + "/model.safetensors")

func textConfiguration(textOnly: Bool = false) -> ServerConfiguration {
    var c = configuration()
    c.textModel = miniLM
    c.textOnly = textOnly
    c.maxTextBytes = 2000
    return c
}

func textRequest(_ first: String, _ second: String, _ extra: [String: Any] = [:]) throws -> ByteBuffer {
    try body(["first": first, "second": second].merging(extra) { $1 })
}

@Suite("The explanation server: texts (POST /v1/explain/text)")
struct TextServerTests {
    static let first = "How do I reset my password?"
    static let second = "I forgot my password and need to reset it."

    @Test("R, similarity and top pairs equal the library's (NPY byte-identical) for cp-lrp and hp; pictures decode; hp carries its note",
          .enabled(if: haveMiniLM))
    func explain() async throws {
        let service = try ExplanationService(configuration: textConfiguration())
        let encoder = try SentenceEncoder.load(directory: miniLM)
        try await makeApp(service).test(.router) { client in
            for rules in ["cp-lrp", "hp"] {
                let e = try TextExplainer(encoder: encoder, rules: rules).explain(Self.first, Self.second)
                let expected = NPY.encode(try e.relevanceTensor())
                let req = try textRequest(Self.first, Self.second, ["matrix": true, "pictures": rules == "cp-lrp",
                                                                    "settings": ["rules": rules, "top_k": 4]])
                try await client.execute(uri: "/v1/explain/text", method: .post, headers: jsonType, body: req) { r in
                    #expect(r.status == .ok)
                    let o = try object(r.body)
                    #expect(Data(base64Encoded: o["matrix_npy"] as! String) == expected, "byte-identical R under \(rules)")
                    #expect(abs((o["similarity"] as! Double) - Double(e.pair.similarity)) <= 1e-6)
                    let top = try #require(o["top_positive"] as? [[String: Any]])
                    #expect(top.count == min(4, e.top(4).count))
                    let libraryTop = e.top(1)[0]
                    let first = try #require(top.first?["first"] as? [String: Any])
                    #expect(first["index"] as? Int == libraryTop.first.index && first["text"] as? String == libraryTop.first.text)
                    let notes = try #require(o["notes"] as? [String])
                    #expect(notes.contains { $0.contains("under hp") } == (rules == "hp"))
                    if rules == "cp-lrp" {
                        // The pair shares "reset" and "password": the top pair joins equal words.
                        #expect(libraryTop.first.text.lowercased() == libraryTop.second.text.lowercased())
                        for key in ["pair_png", "matrix_png"] {
                            let png = try RGBImage.decode(try #require(Data(base64Encoded: o[key] as! String)))
                            #expect(png.width > 300, "\(key) decodes")
                        }
                    } else {
                        #expect(o["pair_png"] == nil)
                    }
                }
            }
            try await client.execute(uri: "/v1/model", method: .get) { r in
                let o = try object(r.body)
                let text = try #require(o["text"] as? [String: Any])
                #expect(text["hidden_size"] as? Int == 384 && text["rules"] as? String == "cp-lrp")
                #expect(o["source"] != nil, "the image model is there beside the text model")
            }
        }
    }

    @Test("a text seen before is explained from cached factors: one computation per text and rules, R byte-identical to the library's under any similarity",
          .enabled(if: haveMiniLM))
    func cachedTexts() async throws {
        let service = try ExplanationService(configuration: textConfiguration())
        let encoder = try SentenceEncoder.load(directory: miniLM)
        let third = "Where can I change my login details?"
        // (first, second, rules, similarity, factor computations and cache hits after the request)
        let steps: [(String, String, String, String, Int, Int)] = [
            (Self.first, Self.second, "cp-lrp", "cosine", 2, 0),
            (Self.first, third, "cp-lrp", "cosine", 3, 1),  // the first text's factors are reused
            (Self.second, Self.first, "cp-lrp", "cosine", 3, 3),
            (Self.first, Self.second, "cp-lrp", "dot", 3, 5),  // the similarity only scales the pair
            (Self.first, Self.second, "hp", "cosine", 5, 5),  // other rules, other factors
        ]
        try await makeApp(service).test(.router) { client in
            for (a, b, rules, similarity, computations, hits) in steps {
                let ex = try TextExplainer(encoder: encoder, rules: rules, similarity: Similarity(rawValue: similarity))
                let expected = NPY.encode(try ex.explain(a, b).relevanceTensor())
                let req = try textRequest(a, b, ["matrix": true, "settings": ["rules": rules, "similarity": similarity]])
                try await client.execute(uri: "/v1/explain/text", method: .post, headers: jsonType, body: req) { r in
                    #expect(r.status == .ok)
                    let o = try object(r.body)
                    #expect(Data(base64Encoded: o["matrix_npy"] as! String) == expected, "byte-identical R: \(rules), \(similarity), '\(b)'")
                }
                try await client.execute(uri: "/metrics", method: .get) { r in
                    let text = String(buffer: r.body)
                    #expect(text.contains("bilrp_factor_computations_total \(computations)\n"), "after \(rules) \(similarity) '\(b)': \(text)")
                    #expect(hits == 0 ? !text.contains("bilrp_cache_hits_total") || text.contains("bilrp_cache_hits_total 0\n")
                                      : text.contains("bilrp_cache_hits_total \(hits)\n"), "\(text)")
                }
            }
        }
    }

    @Test("batch: one query against items, each result the library's explanation of the pair; each distinct text computed once; bad items named",
          .enabled(if: haveMiniLM))
    func batch() async throws {
        var c = textConfiguration()
        c.maxBatch = 4
        let service = try ExplanationService(configuration: c)
        let ex = try TextExplainer(encoder: try SentenceEncoder.load(directory: miniLM))
        let items = [Self.second, "Where can I change my login details?", Self.second, Self.first]
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/v1/explain/text/batch", method: .post, headers: jsonType,
                                     body: try body(["query": Self.first, "items": items, "settings": ["top_k": 2]])) { r in
                #expect(r.status == .ok)
                let results = try #require(try object(r.body)["results"] as? [[String: Any]])
                #expect(results.count == items.count)
                for (item, o) in zip(items, results) {
                    let e = try ex.explain(Self.first, item)
                    #expect(abs((o["similarity"] as! Double) - Double(e.pair.similarity)) <= 1e-6, "'\(item)'")
                    let inputs = try #require(o["inputs"] as? [[String: Any]])
                    #expect(inputs.map { $0["text"] as? String } == [Self.first, item])
                    let top = try #require(o["top_positive"] as? [[String: Any]])
                    let library = e.top(2)
                    #expect(top.count == library.count)
                    for (t, l) in zip(top, library) {
                        #expect(abs((t["value"] as! Double) - Double(l.value)) <= 1e-6 * max(1, abs(Double(l.value))))
                        #expect((t["first"] as? [String: Any])?["index"] as? Int == l.first.index)
                        #expect((t["second"] as? [String: Any])?["index"] as? Int == l.second.index)
                    }
                }
            }
            try await client.execute(uri: "/metrics", method: .get) { r in
                let text = String(buffer: r.body)
                #expect(text.contains("bilrp_factor_computations_total 3\n"), "three distinct texts: \(text)")
            }
            let cases: [([String: Any], String)] = [
                (["query": "a", "items": [String]()], "items is empty"),
                (["query": "a", "items": ["b", "c", "d", "e", "f"]], "items has 5 entries, more than the limit of 4 (max_batch)"),
                (["query": "a", "items": ["b", " "]], "items[1]: the text has no tokens"),
                (["query": "", "items": ["b"]], "query: the text is empty"),
                (["query": "a", "items": [String(repeating: "word ", count: 401)]], "items[0] has 2005 UTF-8 bytes, more than the limit of 2000 (max_text_bytes)"),
                (["query": "a", "items": ["b"], "settings": ["rules": "x"]], "settings.rules must be one of"),
                (["query": "a", "items": [["image": "AAAA"]]], "items[0] has the wrong type"),
            ]
            for (req, message) in cases {
                try await client.execute(uri: "/v1/explain/text/batch", method: .post, headers: jsonType, body: try body(req)) { r in
                    #expect(r.status == .badRequest, "\(message)")
                    let error = try object(r.body)["error"] as? String ?? ""
                    #expect(error.contains(message), "\(error)")
                }
            }
        }
    }

    @Test("bad texts and settings: 400 naming the field and the limit; the server keeps serving", .enabled(if: haveMiniLM))
    func badInput() async throws {
        let service = try ExplanationService(configuration: textConfiguration())
        let long = String(repeating: "word ", count: 401)
        let cases: [(ByteBuffer, String)] = [
            (try textRequest("", "x"), "first: the text is empty"),
            (try textRequest("x", " \t\u{7}"), "second: the text has no tokens"),
            (try textRequest(long, "x"), "first has 2005 UTF-8 bytes, more than the limit of 2000 (max_text_bytes)"),
            (try textRequest("a", "b", ["settings": ["rules": "*:gradient"]]), "settings.rules must be one of cp-lrp, hp (got '*:gradient')"),
            (try textRequest("a", "b", ["settings": ["similarity": "l2"]]), "settings.similarity must be dot or cosine"),
            (try textRequest("a", "b", ["settings": ["top_k": 1001]]), "settings.top_k must be in 0...1000"),
            (try textRequest("a", "b", ["settings": ["patch": 4]]), "unknown field 'settings.patch'"),
            (try body(["first": "a"]), "missing field 'second'"),
            (try textRequest("a", "b", ["settings": ["rules": NSNull()]]), "settings.rules is null (give a value or leave the field out)"),
            (try body(["first": ["image": "AAAA"], "second": "b"]), "first has the wrong type (expected a string)"),
        ]
        try await makeApp(service).test(.router) { client in
            for (req, message) in cases {
                try await client.execute(uri: "/v1/explain/text", method: .post, headers: jsonType, body: req) { r in
                    #expect(r.status == .badRequest, "\(message)")
                    let error = try object(r.body)["error"] as? String ?? ""
                    #expect(error.contains(message), "\(error)")
                }
            }
            try await client.execute(uri: "/v1/explain/text", method: .post, headers: jsonType,
                                     body: try textRequest("a cat", "a dog")) { r in
                #expect(r.status == .ok)
            }
        }
    }

    @Test("text only: the image routes answer 404 saying so, /v1/model has only the text model; texts are explained",
          .enabled(if: haveMiniLM))
    func textOnly() async throws {
        let service = try ExplanationService(configuration: textConfiguration(textOnly: true))
        let image = try imageData("baseline.jpg").base64EncodedString()
        try await makeApp(service).test(.router) { client in
            let requests: [(String, [String: Any])] = [
                ("/v1/factors", ["image": image]),
                ("/v1/explain", ["first": ["image": image], "second": ["image": image]]),
                ("/v1/explain/batch", ["query": ["image": image], "items": [["image": image]]]),
            ]
            for (uri, req) in requests {
                try await client.execute(uri: uri, method: .post, headers: jsonType, body: try body(req)) { r in
                    #expect(r.status == .notFound, "\(uri)")
                    let error = try object(r.body)["error"] as? String ?? ""
                    #expect(error.contains("this server has no image model"))
                }
            }
            try await client.execute(uri: "/v1/model", method: .get) { r in
                let o = try object(r.body)
                #expect(o["text"] != nil && o["source"] == nil && o["limits"] != nil)
            }
            try await client.execute(uri: "/v1/explain/text", method: .post, headers: jsonType,
                                     body: try textRequest(Self.first, Self.second)) { r in
                #expect(r.status == .ok)
            }
        }
    }

    @Test("without a text model the text route is a 404 naming --text-model; text_only without a model and bad text_rules are refused")
    func noTextModel() async throws {
        let service = try ExplanationService(configuration: configuration())
        try await makeApp(service).test(.router) { client in
            try await client.execute(uri: "/v1/explain/text", method: .post, headers: jsonType, body: try textRequest("a", "b")) { r in
                #expect(r.status == .notFound)
                let error = try object(r.body)["error"] as? String ?? ""
                #expect(error.contains("start it with --text-model DIR"))
            }
        }
        var c = configuration()
        c.textOnly = true
        #expect { try c.validate() } throws: { "\($0)".contains("text_only needs a text_model") }
        c.textModel = "/nonexistent"
        c.textRules = "*:nonsense"
        #expect { try c.validate() } throws: { "\($0)".contains("text_rules:") }
        c.textRules = "cp-lrp"
        #expect { try ExplanationService(configuration: c) } throws: { "\($0)".contains("/nonexistent") }
    }
}
