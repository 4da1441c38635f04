import BiLRP
import BiLRPIO
import BiLRPReference
import Foundation
import Testing

/// The fixture script's token model (`TokenNet`): linear layers on every token of a (T, D)
/// sequence, a residual sum reading the input again, mean and sum pooling over the tokens.
func tokenGraph(_ weights: (String) throws -> (w: Tensor, b: [Float]?)) throws -> Graph {
    func linear(_ name: String) throws -> Graph.Op {
        let (w, b) = try weights(name)
        return .layer(.linear(try Linear(weight: w.data, bias: b, inFeatures: w.shape[1], outFeatures: w.shape[0])))
    }
    func n(_ name: String, _ op: Graph.Op, _ ins: [String], _ out: String) -> Graph.Node {
        Graph.Node(name: name, op: op, inputs: ins, output: out)
    }
    return try Graph(input: "input", nodes: [
        n("lin1", try linear("lin1"), ["input"], "l1"), n("relu1", .layer(.relu), ["l1"], "a"),
        n("lin2", try linear("lin2"), ["a"], "l2"), n("add", .add, ["l2", "input"], "s"),
        n("relu2", .layer(.relu), ["s"], "b"), n("lin3", try linear("lin3"), ["b"], "l3"),
        n("relu3", .layer(.relu), ["l3"], "c"), n("mean", .reduce(.width, mean: true), ["c"], "cm"),
        n("mul", .scale(0.5), ["b"], "bh"), n("sum", .reduce(.width, mean: false), ["bh"], "bs"),
        n("concat", .concat, ["cm", "bs"], "out"),
    ], output: "out")
}

@Suite("Sequences: tokens x features")
struct SequenceTests {
    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "" } catch { return "\(error)" }
    }

    func fixtureGraph() throws -> (SafetensorsFile, Graph) {
        let f = try fixture("tokens")
        return (f, try tokenGraph { name in (try f.t("\(name).weight"), try f.t("\(name).bias").data) })
    }

    @Test("a token model built in Swift agrees with PyTorch: A, R, y on sequences of 9 and 11 tokens, hp against the true Hessian x Product")
    func torchTokens() throws {
        let (f, g) = try fixtureGraph()
        #expect(try g.shapes(for: Shape3(12, 1, 9))["out"] == Shape3(22, 1, 1))
        try compareWithFixture(f, graph: g, blockSize: 2)
        try compareWithFixture(f, graph: g, blockSize: 2, kernels: ReferenceKernels())
    }

    @Test("torch.onnx.export of the token model: imported as a sequence, forward equals onnxruntime, explanation equals PyTorch")
    func onnxTokens() throws {
        let m = try ONNXImporter.load(path: fixturePath("tokens.onnx"))
        #expect(m.unsupported.isEmpty, "\(m.unsupported)")
        #expect(m.sequenceInput && m.inputShape == Shape3(12, 1, 9))
        let f = try fixture("tokens")
        let ex = try Explainer(graph: m.graph, head: .identity, composite: try .preset("hp"))
        expectClose(try ex.embedding(try f.t("x1")), try f.t("ort.output").data, tol: 1e-5, "forward vs onnxruntime")
        try compareWithFixture(f, graph: m.graph, blockSize: 3)
    }

    @Test("bilrp inspect shows a sequence model's values as the file has them: (T, D) and (D)")
    func inspect() throws {
        let r = try runBilrp(["inspect", fixturePath("tokens.onnx"), "--size", "30"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("input a sequence (N, T, D)"), "\(r.stdout)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.contains("/lin1/MatMul") && $0.contains("[30, 16]") }, "\(r.stdout)")
        #expect(lines.contains { $0.contains("/Concat") && $0.contains("[22]") }, "\(r.stdout)")
    }

    @Test("relevance at full resolution comes back token-major (T, D); its token sums are the patch-1 factors")
    func layout() throws {
        let (f, g) = try fixtureGraph()
        let ex = try Explainer(graph: g, head: .projection(try f.t("head")), composite: try .preset("epsilon-plus-flat"))
        let x = try f.t("x2")
        let (t, d) = (x.shape[0], x.shape[1])
        let factors = try ex.factors(x, patch: 1)
        #expect(factors.grid.count == t)
        let h = factors.outputs
        for m in [0, h - 1] {
            var r = [Float](repeating: 0, count: h)
            r[m] = factors.embedding[m]
            let rel = try ex.relevance(x, outputRelevance: r)
            #expect(rel.shape == [t, d])
            let perToken = (0..<t).map { i in (0..<d).reduce(Float(0)) { $0 + rel.data[i * d + $1] } }
            expectClose(perToken, (0..<t).map { factors.a[$0 * h + m] }, tol: 1e-5, "token sums, output \(m)")
        }
    }

    @Test("conservation on a bias-free token model: |sum R - y| <= 1e-4 |y|", arguments: ["hp", "*:gamma=0.25"])
    func conservation(spec: String) throws {
        var seed: UInt64 = 70
        let g = try tokenGraph { name in
            let (o, i) = ["lin1": (16, 12), "lin2": (12, 16), "lin3": (10, 12)][name]!
            seed += 1
            return (try Tensor(shape: [o, i], data: random(o * i, seed: seed, scale: (2 / Float(i)).squareRoot())), nil)
        }
        try expectConservation(g, spec: spec, input: [7, 12], outputs: 6, patch: 1)
    }

    @Test("ONNX ops a sequence cannot take here (Flatten, Concat along the tokens, a feature sum without keepdims) are refused by node name")
    func onnxRefusals() throws {
        let path = fixturePath("tokens_unsupported.onnx")
        let m = try ONNXImporter.load(path: path)
        #expect(m.sequenceInput && m.graph.output == "r")
        #expect(m.unsupported.count == 3, "\(m.unsupported)")
        for (node, cause) in [("flatten", "Flatten on a sequence (tokens x features)"), ("concat_tokens", "Concat on axis 1"),
                              ("sum_features", "keepdims=0 over axes [2]")] {
            #expect(m.unsupported.contains { $0.contains(node) && $0.contains(cause) }, "\(node): \(m.unsupported)")
            let e = message { _ = try ONNXImporter.load(path: path, cut: .node(node)) }
            #expect(e.contains(node) && e.contains("not supported"), "\(e)")
        }
    }

    @Test("a sequence of the wrong width, or a tensor of another rank, is an error that names it")
    func errors() throws {
        let (_, g) = try fixtureGraph()
        let ex = try Explainer(graph: g, head: .randomProjection(outputs: 3, seed: 1), composite: try .preset("hp"))
        #expect(message { _ = try ex.embedding(try Tensor(shape: [9, 11], data: random(99, seed: 1))) }
            == "shape mismatch for input features: expected 12, found 11")
        #expect(message { _ = try ex.embedding(try Tensor(shape: [1, 9, 12], data: random(108, seed: 1))) }
            == "shape mismatch for input: expected 2 dimensions (tokens, features), found [1, 9, 12]")
        // A graph whose input no weighted node reads takes either kind; other ranks are refused.
        let relu = try Graph(input: "x", nodes: [Graph.Node(name: "r", op: .layer(.relu), inputs: ["x"], output: "r")],
                             output: "r")
        let free = try Explainer(graph: relu, head: .identity, composite: try .preset("hp"))
        #expect(message { _ = try free.embedding(try Tensor(shape: [108], data: random(108, seed: 1))) }
            == "shape mismatch for input: expected 3 dimensions (C, H, W) or 2 (tokens, features), found [108]")
        #expect(try free.relevance(try Tensor(shape: [9, 12], data: random(108, seed: 1)), outputRelevance: random(108, seed: 2)).shape
            == [9, 12])
    }
}
