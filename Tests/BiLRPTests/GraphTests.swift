import BiLRP
import BiLRPReference
import Foundation
import Testing

/// A small DAG with every multi-input op: a residual sum, a concatenation, a constant factor and a
/// standalone batch norm (one that follows a ReLU, so it cannot be folded).
func diamondGraph(seed: UInt64, bias: Bool) throws -> Graph {
    func conv(_ name: String, _ from: String, _ cin: Int, _ cout: Int, _ k: Int, stride: Int = 1, _ s: UInt64) throws
        -> Graph.Node {
        Graph.Node(name: name, op: .layer(.conv2d(try Conv2d(
            weight: random(cout * cin * k * k, seed: seed &+ s, scale: (2 / Float(cin * k * k)).squareRoot()),
            bias: bias ? random(cout, seed: seed &+ s &+ 1000, scale: 0.1) : nil, outChannels: cout, inChannels: cin,
            kernel: (k, k), stride: (stride, stride), padding: (k / 2, k / 2)))), inputs: [from], output: name)
    }
    func node(_ name: String, _ op: Graph.Op, _ inputs: [String]) -> Graph.Node {
        Graph.Node(name: name, op: op, inputs: inputs, output: name)
    }
    let bn = try BatchNorm2d(weight: random(6, seed: seed &+ 50, scale: 0.2).map { 1 + $0 },
                             bias: bias ? random(6, seed: seed &+ 51, scale: 0.1) : [Float](repeating: 0, count: 6),
                             runningMean: bias ? random(6, seed: seed &+ 52, scale: 0.1) : [Float](repeating: 0, count: 6),
                             runningVar: random(6, seed: seed &+ 53, scale: 0.2).map { 1 + abs($0) })
    // Given out of order on purpose: the graph sorts its nodes.
    return try Graph(input: "x", nodes: [
        node("sum", .add, ["b1", "skip"]),
        try conv("c0", "x", 3, 6, 3, 1),
        node("r0", .layer(.relu), ["c0"]),
        try conv("b0", "r0", 6, 6, 3, stride: 2, 2),
        node("rb", .layer(.relu), ["b0"]),
        try conv("b1", "rb", 6, 6, 3, 3),
        try conv("skip", "r0", 6, 6, 1, stride: 2, 4),
        node("r1", .layer(.relu), ["sum"]),
        node("half", .scale(0.5), ["r1"]),
        node("norm", .layer(.batchNorm2d(bn)), ["r0"]),
        node("rn", .layer(.relu), ["norm"]),
        try conv("c2", "rn", 6, 4, 3, stride: 2, 5),
        node("rc", .layer(.relu), ["c2"]),
        node("cat", .concat, ["half", "rc"]),
        node("pool", .layer(.maxPool2d(Pool2d(kernel: (2, 2)))), ["cat"]),
    ], output: "pool")
}

/// Two random inputs of a shape.
func randomPair(_ shape: [Int], seeds: (UInt64, UInt64)) throws -> (Tensor, Tensor) {
    let count = shape.reduce(1, *)
    return (try Tensor(shape: shape, data: random(count, seed: seeds.0)), try Tensor(shape: shape, data: random(count, seed: seeds.1)))
}

/// A graph explained with the C kernels and with the pure-Swift reference kernels: A and R within
/// 1e-4 of their largest values, y within 1e-5.
func expectKernelsAgree(_ g: Graph, spec: String, input shape: [Int], outputs: Int, blockSize: Int, patch: Int,
                        sourceLocation: SourceLocation = #_sourceLocation) throws {
    let (x1, x2) = try randomPair(shape, seeds: (11, 12))
    func make(_ k: any Kernels) throws -> Explainer {
        try Explainer(graph: g, head: .randomProjection(outputs: outputs, seed: 2), composite: try .named(spec),
                      bounds: Preprocessing.torchvision.bounds, blockSize: blockSize, kernels: k)
    }
    let fast = try make(CKernelsBackend()).explain(x1, x2, patch: patch)
    let slow = try make(ReferenceKernels()).explain(x1, x2, patch: patch)
    expectClose(fast.first.a, slow.first.a, tol: 1e-4, "A \(spec)", sourceLocation: sourceLocation)
    expectClose(fast.relevance, slow.relevance, tol: 1e-4, "R \(spec)", sourceLocation: sourceLocation)
    #expect(abs(fast.similarity - slow.similarity) <= 1e-5 * abs(slow.similarity), sourceLocation: sourceLocation)
}

/// Conservation on a bias-free graph: |sum R - y| <= 1e-4 |y| (and y not vanishing).
func expectConservation(_ g: Graph, spec: String, input shape: [Int], outputs: Int, patch: Int,
                        sourceLocation: SourceLocation = #_sourceLocation) throws {
    let ex = try Explainer(graph: g, head: .randomProjection(outputs: outputs, seed: 4), composite: try .named(spec))
    let (x1, x2) = try randomPair(shape, seeds: (21, 22))
    let pair = try ex.explain(x1, x2, patch: patch)
    let sum = pair.relevance.reduce(0) { $0 + Double($1) }, y = Double(pair.similarity)
    #expect(abs(sum - y) <= 1e-4 * abs(y), "\(spec): sum R \(sum), y \(y)", sourceLocation: sourceLocation)
    #expect(abs(y) > 1e-3, sourceLocation: sourceLocation)
}

@Suite("Model graphs")
struct GraphTests {
    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "" } catch { return "\(error)" }
    }

    @Test("nodes given in any order run in a topological order; shapes follow the ops")
    func order() throws {
        let g = try diamondGraph(seed: 1, bias: true)
        let names = g.nodes.map(\.name)
        for n in g.nodes {
            for v in n.inputs where v != g.input {
                #expect(names.firstIndex(of: v)! < names.firstIndex(of: n.name)!, "\(v) before \(n.name)")
            }
        }
        let s = try g.shapes(for: Shape3(3, 16, 16))
        #expect(s["cat"] == Shape3(10, 8, 8))
        #expect(s["pool"] == Shape3(10, 4, 4))
        #expect(!g.isChain)
        #expect(Graph(chain: try smallNet(seed: 1, bias: true)).isChain)
    }

    @Test("a DAG with Add, Concat, Mul and a standalone BatchNorm: C kernels equal the reference kernels",
          arguments: ["hp", "epsilon-gamma-box", "epsilon-plus-flat", "first:zb;conv:alphabeta=2,1;add:epsilon=0.01"])
    func againstReference(spec: String) throws {
        try expectKernelsAgree(try diamondGraph(seed: 3, bias: true), spec: spec, input: [3, 16, 16], outputs: 7,
                               blockSize: 3, patch: 4)
    }

    @Test("conservation on a bias-free DAG: LRP-0 and gamma with the residual rule, |sum R - y| <= 1e-4 |y|",
          arguments: ["hp", "*:gamma=0.25", "first:zplus;*:gamma=0.1"])
    func conservation(spec: String) throws {
        try expectConservation(try diamondGraph(seed: 5, bias: false), spec: spec, input: [3, 16, 16], outputs: 9, patch: 4)
    }

    @Test("a chain given as a general graph (other names, no indices, nodes in reverse order) gives the chain's numbers, bit for bit")
    func chainIsAGraph() throws {
        let model = try smallNet(seed: 7, bias: true)
        let x1 = try Tensor(shape: [3, 29, 27], data: random(3 * 29 * 27, seed: 1))
        let x2 = try Tensor(shape: [3, 29, 27], data: random(3 * 29 * 27, seed: 2))
        let a = try Explainer(model: model, composite: try .preset("paper-vgg"), bounds: Preprocessing.torchvision.bounds)
        // Sorted back into the chain's order; indices from positions, so the composite's ranges match.
        let nodes = model.layers.enumerated().map { i, l in
            Graph.Node(name: "n\(i)", op: .layer(l), inputs: [i == 0 ? "image" : "v\(i - 1)"], output: "v\(i)")
        }
        let g = try Graph(input: "image", nodes: nodes.reversed(), output: "v\(model.layers.count - 1)")
        #expect(g.nodes.map(\.name) == nodes.map(\.name))
        let b = try Explainer(graph: g, composite: try .preset("paper-vgg"), bounds: Preprocessing.torchvision.bounds)
        #expect(b.rules == a.rules)
        #expect(try a.explain(x1, x2, patch: 4).relevance == b.explain(x1, x2, patch: 4).relevance)
    }

    @Test("ResNet node names: the list cuts are checked against is the one the builder makes")
    func resnetNames() throws {
        for arch in [ResNet.resnet18, .resnet50] {
            #expect(arch.nodeNames == (try arch.graph(seed: 1).nodes.map(\.name)), "\(arch)")
        }
    }

    @Test("composites select nodes by name pattern, first and last")
    func namePatterns() throws {
        let g = try ResNet.resnet18.graph(cut: "layer2", seed: 1)
        let ex = try Explainer(graph: g, composite: try .named("first:zb;layer2.*:gamma=0.1;last:epsilon=0.5;conv:zplus"),
                               bounds: Preprocessing.torchvision.bounds)
        #expect(ex.nodeRules["conv1"] == .zBox)
        #expect(ex.nodeRules["layer1.0.conv2"] == .zPlus)
        #expect(ex.nodeRules["layer2.0.downsample.0"] == .gamma(0.1))
        // The last weighted node is in layer2, which the pattern claims first.
        #expect(ex.nodeRules["layer2.1.conv2"] == .gamma(0.1))
        // On a graph an index is the node's position as `bilrp inspect` lists it, batch norms included.
        let ex3 = try Explainer(graph: g, composite: try .named("4:gamma=0.5;*:zero"))
        #expect(g.nodes[4].name == "layer1.0.conv1" && ex3.nodeRules["layer1.0.conv1"] == .gamma(0.5))
        #expect(ex3.nodeRules.values.filter { $0 == .gamma(0.5) }.count == 1)
        let ex2 = try Explainer(graph: g, composite: try .named("last:epsilon=0.5;*:zero"))
        #expect(ex2.nodeRules["layer2.1.conv2"] == .epsilon(0.5))
        #expect(ex2.nodeRules["layer2.1.conv1"] == .zero)
    }

    @Test("malformed graphs are errors that name the node")
    func malformed() throws {
        func n(_ name: String, _ op: Graph.Op, _ ins: [String]) -> Graph.Node {
            Graph.Node(name: name, op: op, inputs: ins, output: name)
        }
        #expect(message { _ = try Graph(input: "x", nodes: [n("a", .layer(.relu), ["b"]), n("b", .layer(.relu), ["a"])], output: "b") }
            == "invalid model graph: node 'a' is on a cycle (or reads a value of one)")
        #expect(message { _ = try Graph(input: "x", nodes: [n("a", .layer(.relu), ["nowhere"])], output: "a") }
            == "invalid model graph: node 'a' reads 'nowhere', which no node writes and which is not the input")
        #expect(message { _ = try Graph(input: "x", nodes: [n("a", .layer(.relu), ["x"]), n("a", .layer(.relu), ["x"])], output: "a") }
            == "invalid model graph: two nodes are named 'a'")
        #expect(message { _ = try Graph(input: "x", nodes: [n("s", .add, ["x"])], output: "s") }
            == "invalid model graph: node 's' (Add) has 1 inputs")
        let pooled = try Graph(input: "x", nodes: [
            n("p", .layer(.maxPool2d(Pool2d(kernel: (2, 2)))), ["x"]), n("s", .add, ["x", "p"]),
        ], output: "s")
        #expect(message { _ = try pooled.shapes(for: Shape3(3, 8, 8)) }
            == "shape mismatch for input 1 of node 's' (Add): expected [3, 8, 8] like input 0, found [3, 4, 4]")
        let cat = try Graph(input: "x", nodes: [
            n("p", .layer(.maxPool2d(Pool2d(kernel: (2, 2)))), ["x"]), n("c", .concat, ["x", "p"]),
        ], output: "c")
        #expect(message { _ = try cat.shapes(for: Shape3(3, 8, 8)) }
            == "shape mismatch for input 1 of node 'c' (Concat): expected 8 x 8 like input 0, found 4 x 4")
        #expect(message { _ = try cat.cut(at: "q") } == "no node or value is named 'q'")
        #expect(message { _ = try ResNet.resnet50.graph(cut: "layer5", seed: 1) }.hasPrefix(
            "resnet50 has no node or stage named 'layer5' (stages: conv1, maxpool, layer1, layer2, layer3, layer4, avgpool, fc;"))
    }

    @Test("ResNet cuts: stage names end at the stage's last block, nodes inside blocks keep their ancestors only")
    func resnetCuts() throws {
        let s = Shape3(3, 64, 64)
        #expect(try ResNet.resnet18.graph(cut: "layer4", seed: 1).shapes(for: s)["layer4.1"] == Shape3(512, 2, 2))
        #expect(try ResNet.resnet50.graph(cut: "layer3", seed: 1).shapes(for: s)["layer3.5"] == Shape3(1024, 4, 4))
        let inside = try ResNet.resnet18.graph(cut: "layer2.0.conv2", seed: 1)
        #expect(inside.output == "layer2.0.conv2")
        #expect(!inside.nodes.contains { $0.name == "layer2.0.downsample.0" })
        let full = try ResNet.resnet18.graph(seed: 1)
        #expect(full.output == "fc")
        #expect(full.parameterCount == 11_689_512)  // torchvision's count
    }
}
