import BiLRP
import Foundation
import SwiftProtobuf

/// A model read from an ONNX file: the graph of its supported nodes.
public struct ONNXModel: Sendable {
    /// The supported nodes (up to the cut, when one was asked for), named as in the file.
    public var graph: Graph
    /// The same model as a chain of layers, numbered as `--layer` counts them, when the graph is a
    /// chain (VGG); nil for a DAG (ResNet).
    public var chain: SequentialModel?
    /// True when the file's input is channels-last (N, H, W, C) and a Transpose makes it NCHW;
    /// this library always takes (C, H, W), so the transpose is absorbed.
    public var channelsLastInput: Bool
    /// The file's static input size (C, H, W), when it declares one; (D, 1, T) for a sequence.
    public var inputShape: Shape3?
    /// The input is a sequence, (N, T, D) in the file: the explainer takes it as a (T, D) tensor.
    public var sequenceInput: Bool
    /// Nodes that cannot be used, as "op X at node Y": they and every node that reads them.
    public var unsupported: [String]
    public var producer: String
    /// How chain indices were assigned: "module names" (torch export: `/features/features.2/Relu` is
    /// index 2, matching torchvision), "node order" (one index per layer node, as torchvision numbers
    /// a sequential model; layout Transposes, Identity, Dropout and Softmax take none), or "graph"
    /// (a DAG: nodes are cut by name).
    public var numbering: String

    /// The ONNX node behind each chain index (`"-"` for an index the exporter folded away).
    public var nodeNames: [String] {
        guard let chain else { return graph.nodes.map(\.name) }
        var names = [String](repeating: "-", count: chain.layers.count)
        for n in graph.nodes { if let i = n.index, i < names.count { names[i] = n.name } }
        return names
    }
}

/// Imports ONNX graphs (any DAG of the supported ops, nodes in any order): Conv, Relu, MaxPool,
/// AveragePool, GlobalAveragePool, BatchNormalization (folded later), Flatten, Reshape (as a
/// flatten), Gemm, MatMul (+ Add of a bias), Add of two activations, Concat over channels, Mul by a
/// scalar constant, Max / Min of activations, Pad (constant), Slice (step 1), ReduceSum / ReduceMean
/// (over C, H, W), on (N, T, D) sequences MatMul (+ Add of a bias) on every token and the
/// element-wise ops, Pad, Slice, Concat of features and the reductions over T and D, Transpose (channels-last input, or channels-last flatten before a dense layer),
/// Identity, Dropout, Softmax (dropped for explanation); explicit pads and auto_pad. Other ops are
/// listed in `unsupported`; a cut that needs one is an error naming the op and the node.
public enum ONNXImporter {
    /// Where to cut the graph.
    public enum Cut: Sendable, Equatable {
        /// Keep chain layers [0, L) (`features[:L]`; for VGG-16, 31 ends after pool5).
        case layers(Int)
        /// Keep everything the named node (or value) needs, that node last. A module path of a torch
        /// export (`layer4`, `layer3.1`) names the last node of that module.
        case node(String)
    }

    /// - Parameter weights: where initializers the file leaves empty (dims but no data) come from,
    ///   by initializer name: a graph saved without its weights, the weights in safetensors.
    public static func load(path: String, cut: Cut? = nil, weights: (any TensorSource)? = nil) throws -> ONNXModel {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw BiLRPError.io("cannot read ONNX file '\(path)'")
        }
        return try load(data: data, name: path, cut: cut, weights: weights)
    }

    public static func load(data: Data, name: String = "ONNX model", cut: Cut? = nil,
                            weights: (any TensorSource)? = nil) throws -> ONNXModel {
        let proto: Onnx_ModelProto
        do { proto = try Onnx_ModelProto(serializedBytes: data) } catch {
            throw BiLRPError.io("\(name): not a valid ONNX model (protobuf decoding failed: \(error))")
        }
        var b = try Builder(graph: proto.graph, name: name, weights: weights)
        try b.run()
        let all = try b.finish()
        var model = ONNXModel(graph: all, chain: nil, channelsLastInput: b.channelsLastInput, inputShape: b.inputShape,
                              sequenceInput: b.sequences.contains(b.input), unsupported: b.unsupported.map(\.message), producer: proto.producerName,
                              numbering: b.numbering)
        if let cut {
            model.graph = try b.cut(all, cut)
        }
        model.chain = model.graph.isChain && b.numbering != "graph" ? ONNXImporter.chain(model.graph) : nil
        return model
    }

    /// A chain graph as layers by index (identities where an exporter folded an index away).
    static func chain(_ g: Graph) -> SequentialModel {
        var layers: [Layer] = []
        for n in g.nodes {
            guard case let .layer(l) = n.op else { continue }
            while layers.count < (n.index ?? layers.count) { layers.append(.identity) }
            layers.append(l)
        }
        return SequentialModel(layers)
    }

    // MARK: - Graph walk

    struct Builder {
        let graph: Onnx_GraphProto
        let name: String
        var constants: [String: Tensor] = [:]
        var nodes: [Graph.Node] = []
        /// Values renamed by dropped ops (Identity, Dropout, Softmax, layout Transposes, fused bias Adds).
        var alias: [String: String] = [:]
        /// Outputs of unsupported nodes and of every node that reads one, with the first cause.
        var blocked: [String: String] = [:]
        var unsupported: [(node: String, message: String)] = []
        var channelsLastInput = false
        var inputShape: Shape3? = nil
        var numbering = "node order"
        var input = ""
        /// Values in channels-last order (after Transpose(0, 2, 3, 1)), and flattens of them: a
        /// dense layer reading one has its columns in (H, W, C) order.
        var channelsLast: Set<String> = []
        var flattenedChannelsLast: [String: String] = [:]
        var reorder: [(node: Int, from: String)] = []
        var fusedAdds: Set<Int> = []
        /// Values that are sequences, (N, T, D) in the file: tokens x features, stored (D, 1, T)
        /// (see `Shape3`). The input is one when it has three dimensions.
        var sequences: Set<String> = []

        init(graph: Onnx_GraphProto, name: String, weights: (any TensorSource)?) throws {
            self.graph = graph
            self.name = name
            for t in graph.initializer {
                let shape = t.dims.map(Int.init)
                if t.rawData.isEmpty, t.floatData.isEmpty, t.int64Data.isEmpty, t.int32Data.isEmpty, t.doubleData.isEmpty,
                   t.dataLocation != .external, shape.reduce(1, *) > 0 {
                    guard let weights else {
                        throw BiLRPError.io("\(name): initializer '\(t.name)' has no data (a graph saved without weights needs them from a weights file)")
                    }
                    constants[t.name] = try Tensor(shape: shape, data: try weights.required(t.name, shape: shape))
                    continue
                }
                constants[t.name] = try ONNXImporter.tensor(t, file: name)
            }
            for n in graph.node where n.opType == "Constant" {
                if let a = n.attribute.first(where: { $0.name == "value" }), a.hasT, let out = n.output.first {
                    constants[out] = try ONNXImporter.tensor(a.t, file: name)
                }
            }
        }

        func resolve(_ v: String) -> String { alias[v] ?? v }

        /// ONNX nodes in a topological order (files are sorted, but a valid graph need not be).
        func ordered() throws -> [Int] {
            var writer: [String: Int] = [:]
            for (i, n) in graph.node.enumerated() { for o in n.output { writer[o] = i } }
            var state = [UInt8](repeating: 0, count: graph.node.count)
            var order: [Int] = []
            func visit(_ i: Int) throws {
                if state[i] == 2 { return }
                if state[i] == 1 {
                    let n = graph.node[i]
                    throw BiLRPError.invalidGraph("\(name): node '\(n.name.isEmpty ? n.output.first ?? "?" : n.name)' is on a cycle")
                }
                state[i] = 1
                for v in graph.node[i].input { if let j = writer[v] { try visit(j) } }
                state[i] = 2
                order.append(i)
            }
            for i in graph.node.indices { try visit(i) }
            return order
        }

        mutating func run() throws {
            guard let inputProto = graph.input.first(where: { constants[$0.name] == nil }) else {
                throw BiLRPError.io("\(name): the graph has no data input")
            }
            input = inputProto.name
            let dims = inputProto.type.tensorType.shape.dim.map { { if case .dimValue(let v)? = $0.value { return Int(v) } else { return -1 } }($0) }
            if dims.count == 3 { sequences.insert(input) }
            let onnxNodes = graph.node
            let order = try ordered()
            var readers: [String: [Int]] = [:]
            for (i, n) in onnxNodes.enumerated() { for v in n.input { readers[v, default: []].append(i) } }
            for i in order where !fusedAdds.contains(i) {
                let node = onnxNodes[i]
                guard let out = node.output.first, node.opType != "Constant" else { continue }
                let label = node.name.isEmpty ? out : node.name
                let ins = node.input.filter { !$0.isEmpty }.map(resolve)
                // Only the first input of these is an activation (the others: shapes, pads, indices, axes).
                let firstOnly = ["Reshape", "Pad", "Slice", "ReduceSum", "ReduceMean"].contains(node.opType)
                let data = (firstOnly ? Array(ins.prefix(1)) : ins).filter { constants[$0] == nil }
                if let cause = data.compactMap({ blocked[$0] }).first {
                    blocked[out] = cause
                    continue
                }
                guard !data.isEmpty else {
                    // Arithmetic on constants the exporter left (F.pad's pads): computed here.
                    if let t = try ONNXImporter.fold(node, node.input.map { $0.isEmpty ? nil : constants[resolve($0)] },
                                                     file: name) {
                        constants[out] = t
                    }
                    continue
                }
                // A sequence stays one through every op but a reduction over its tokens without
                // keepdims (mean pooling: a vector); ops of maps do not take one.
                let sequence = data.contains { sequences.contains($0) }
                let keepsTokens = !(["ReduceSum", "ReduceMean"].contains(node.opType)
                    && (attr(node, "keepdims")?.i ?? 1) == 0)
                func add(_ op: Graph.Op, _ inputs: [String], output: String? = nil) {
                    nodes.append(Graph.Node(name: label, op: op, inputs: inputs, output: output ?? out,
                                            index: ONNXImporter.moduleIndex(label)))
                    if sequence && keepsTokens { sequences.insert(output ?? out) }
                }
                func refuse(_ what: String) {
                    let message = "op \(what) at node \(label)"
                    unsupported.append((label, message))
                    blocked[out] = message
                }
                let mapOps = ["Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization", "Flatten",
                              "Reshape", "Gemm", "Transpose"]
                if sequence, mapOps.contains(node.opType) {
                    refuse("\(node.opType) on a sequence (tokens x features)"); continue
                }
                switch node.opType {
                case "Shape", "Gather", "Unsqueeze", "Squeeze", "Cast", "ConstantOfShape":
                    // Shape arithmetic (a Reshape's target): no activation comes out of it.
                    blocked[out] = "op \(node.opType) at node \(label)"
                case "Identity", "Dropout", "Softmax":
                    alias[out] = data[0]
                case "Transpose":
                    let perm = attr(node, "perm")?.ints.map(Int.init) ?? []
                    if data[0] == input && perm == [0, 3, 1, 2] {
                        channelsLastInput = true
                        alias[out] = data[0]
                    } else if perm == [0, 2, 3, 1] {
                        alias[out] = data[0]
                        channelsLast.insert(out)
                    } else {
                        refuse("Transpose (perm \(perm))")
                    }
                case "Conv":
                    do { add(.layer(try conv(node, label)), [data[0]]) } catch let BiLRPError.unsupported(m) { refuse("Conv (\(m))") }
                case "Relu":
                    add(.layer(.relu), [data[0]])
                case "MaxPool", "AveragePool":
                    do { add(.layer(try pool(node)), [data[0]]) } catch let BiLRPError.unsupported(m) {
                        refuse("\(node.opType) (\(m))")
                    }
                case "GlobalAveragePool":
                    add(.layer(.adaptiveAvgPool2d(height: 1, width: 1)), [data[0]])
                case "BatchNormalization":
                    let p = try (1...4).map { try constant(node, $0, label) }
                    add(.layer(.batchNorm2d(try BatchNorm2d(
                        weight: p[0].data, bias: p[1].data, runningMean: p[2].data, runningVar: p[3].data,
                        eps: attr(node, "epsilon")?.f ?? 1e-5))), [data[0]])
                case "Flatten", "Reshape":
                    if node.opType == "Flatten", let axis = attr(node, "axis")?.i, axis != 1 {
                        refuse("Flatten with axis \(axis)"); continue
                    }
                    if node.opType == "Reshape", node.input.count > 1, let shape = constants[node.input[1]],
                       !(shape.count == 2 && (shape.data[1] == -1 || shape.data[0] != 0)) {
                        refuse("Reshape to \(shape.data.map { Int($0) }) (only a flatten to (N, D) is supported)"); continue
                    }
                    if channelsLast.contains(node.input[0]) { flattenedChannelsLast[out] = data[0] }
                    add(.layer(.flatten), [data[0]])
                case "Gemm":
                    let w = try constant(node, 1, label)
                    let transB = attr(node, "transB")?.i ?? 0, transA = attr(node, "transA")?.i ?? 0
                    guard transA == 0, w.shape.count == 2 else { refuse("Gemm with transA=1"); continue }
                    let alpha = attr(node, "alpha")?.f ?? 1, beta = attr(node, "beta")?.f ?? 1
                    let (outF, inF) = transB == 1 ? (w.shape[0], w.shape[1]) : (w.shape[1], w.shape[0])
                    var weight = transB == 1 ? w.data : ONNXImporter.transpose(w)
                    weight = weight.map { $0 * alpha }
                    let bias = node.input.count > 2 ? try constant(node, 2, label).data.map { $0 * beta } : nil
                    denseReads(node.input[0])
                    add(.layer(.linear(try Linear(weight: weight, bias: bias, inFeatures: inF, outFeatures: outF))), [data[0]])
                case "MatMul":
                    guard let w = constants[node.input[1]], constants[node.input[0]] == nil else {
                        refuse("MatMul of two activations"); continue
                    }
                    guard w.shape.count == 2 else { refuse("MatMul with a \(w.shape.count)-D weight"); continue }
                    var bias: [Float]? = nil
                    var output = out
                    // MatMul + Add(bias) is one linear layer.
                    if let r = readers[out], r.count == 1, onnxNodes[r[0]].opType == "Add",
                       let b = onnxNodes[r[0]].input.first(where: { $0 != out }).flatMap({ constants[$0] }), b.count == w.shape[1] {
                        bias = b.data
                        output = onnxNodes[r[0]].output[0]
                        fusedAdds.insert(r[0])
                    }
                    denseReads(node.input[0])
                    add(.layer(.linear(try Linear(weight: ONNXImporter.transpose(w), bias: bias, inFeatures: w.shape[0],
                                                  outFeatures: w.shape[1]))), [data[0]], output: output)
                case "Add":
                    guard data.count == ins.count else { refuse("Add of a constant"); continue }
                    add(.add, data)
                case "Mul":
                    guard data.count == 1, let k = ins.compactMap({ constants[$0] }).first, k.count == 1 else {
                        refuse("Mul"); continue
                    }
                    add(.scale(k.data[0]), data)
                case "Concat":
                    let axis = Int(attr(node, "axis")?.i ?? 0)
                    guard (try? self.axis(axis, sequence: sequence)) == .channels, data.count == ins.count else {
                        refuse("Concat on axis \(axis) (only of activations, along the channels or features)"); continue
                    }
                    add(.concat, data)
                case "Max", "Min":
                    guard data.count == ins.count, data.count >= 2 else {
                        refuse("\(node.opType) with a constant (only of two or more activations)"); continue
                    }
                    add(node.opType == "Max" ? .maximum : .minimum, data)
                case "Pad":
                    do { add(.pad(try padding(node, label, sequence: sequence)), [data[0]]) } catch let BiLRPError.unsupported(m) {
                        refuse("Pad (\(m))")
                    }
                case "Slice":
                    do { add(.slice(try slice(node, label, sequence: sequence)), [data[0]]) } catch let BiLRPError.unsupported(m) {
                        refuse("Slice (\(m))")
                    }
                case "ReduceSum", "ReduceMean":
                    do { add(.reduce(try reduction(node, label, sequence: sequence), mean: node.opType == "ReduceMean"), [data[0]]) }
                    catch let BiLRPError.unsupported(m) { refuse("\(node.opType) (\(m))") }
                default:
                    refuse(node.opType)
                }
            }
            if dims.count == 4, dims.dropFirst().allSatisfy({ $0 > 0 }) {
                inputShape = channelsLastInput ? Shape3(dims[3], dims[1], dims[2]) : Shape3(dims[1], dims[2], dims[3])
            } else if dims.count == 3, dims.dropFirst().allSatisfy({ $0 > 0 }) {
                inputShape = Shape3(dims[2], 1, dims[1])
            }
        }

        /// A dense layer about to be added reads this value: remember a channels-last flatten.
        mutating func denseReads(_ v: String) {
            if let from = flattenedChannelsLast[v] { reorder.append((nodes.count, from)) }
        }

        /// The graph of every supported node, ended at the file's output when it is supported, else
        /// at the last supported node; chain indices assigned; dense layers after a channels-last
        /// flatten reordered to this library's (C, H, W) flatten.
        mutating func finish() throws -> Graph {
            guard let last = nodes.last else {
                if let first = unsupported.first { throw BiLRPError.unsupported("\(name): \(first.message): no layer can be imported") }
                throw BiLRPError.io("\(name): the graph has no nodes")
            }
            let declared = graph.output.first.map { resolve($0.name) }
            let output = declared.flatMap { d in nodes.contains { $0.output == d } ? d : nil } ?? last.output
            var g = try Graph(input: input, nodes: nodes, output: output)
            if !reorder.isEmpty {
                guard let inputShape else {
                    throw BiLRPError.unsupported("\(name): a channels-last flatten needs a static input size")
                }
                let shapes = try g.shapes(for: inputShape)
                for (i, from) in reorder {
                    guard case let .layer(.linear(lin)) = nodes[i].op, let s = shapes[from] else { continue }
                    nodes[i].op = .layer(.linear(try ONNXImporter.channelsLastColumns(lin, s, label: nodes[i].name)))
                }
            }
            assignIndices(chain: g.isChain)
            g = try Graph(input: input, nodes: nodes, output: output)
            return g
        }

        /// Torch exports name nodes after their module (`/features/features.12/Conv`): when every layer
        /// of a chain has such a name and the indices increase, use them, so indices match the PyTorch
        /// model even where the exporter fused BatchNorm. Other chains count their layer nodes; a DAG
        /// has no chain indices.
        mutating func assignIndices(chain: Bool) {
            guard chain else {
                numbering = "graph"
                for i in nodes.indices { nodes[i].index = nil }
                return
            }
            let idx = nodes.compactMap(\.index)
            if idx.count == nodes.count, zip(idx, idx.dropFirst()).allSatisfy({ $0 < $1 }) {
                numbering = "module names"
            } else {
                numbering = "node order"
                for i in nodes.indices { nodes[i].index = i }
            }
        }

        /// The graph cut as asked; errors name an unsupported op the cut needs, or the unknown name.
        func cut(_ g: Graph, _ cut: Cut) throws -> Graph {
            switch cut {
            case let .layers(l):
                guard numbering != "graph" else {
                    throw BiLRPError.invalidArgument(
                        "\(name) is a graph, not a chain of layers: cut at a node name (`bilrp inspect \(name)` lists them), not at index \(l)")
                }
                let count = (g.nodes.last?.index ?? -1) + 1
                if l > count, let first = unsupported.first {
                    throw BiLRPError.unsupported("\(first.message) stops the import after layer \(count - 1); layer \(l) cannot be reached")
                }
                guard l >= 1, l <= count else { throw BiLRPError.invalidLayerIndex(l, count: count) }
                let keep = g.nodes.filter { ($0.index ?? 0) < l }
                return try Graph(input: g.input, nodes: keep, output: keep.last?.output ?? g.input)
            case let .node(n):
                if let cause = blocked[n] ?? unsupported.first(where: { $0.node == n })?.message {
                    throw BiLRPError.unsupported("\(name): '\(n)' needs \(cause), which is not supported")
                }
                if g.nodes.contains(where: { $0.name == n || $0.output == resolve(n) }) {
                    return try g.cut(at: g.nodes.contains { $0.name == n } ? n : resolve(n))
                }
                // A module path of a torch export: the last node inside it.
                if let last = g.nodes.last(where: { ONNXImporter.modulePaths($0.name).contains(n) }) {
                    return try g.cut(at: last.name)
                }
                throw BiLRPError.invalidArgument(
                    "\(name): no node, value or module is named '\(n)' (`bilrp inspect \(name)` lists the names)")
            }
        }

        func attr(_ n: Onnx_NodeProto, _ key: String) -> Onnx_AttributeProto? { n.attribute.first { $0.name == key } }

        func constant(_ n: Onnx_NodeProto, _ i: Int, _ label: String) throws -> Tensor {
            guard i < n.input.count, let t = constants[n.input[i]] else {
                throw BiLRPError.unsupported("\(n.opType) at node \(label): input \(i) must be a constant (initializer)")
            }
            return t
        }

        func pads(_ n: Onnx_NodeProto, kernel: [Int], stride: [Int]) throws -> (Int, Int) {
            let auto = attr(n, "auto_pad").map { String(decoding: $0.s, as: UTF8.self) } ?? "NOTSET"
            switch auto {
            case "NOTSET", "":
                let p = attr(n, "pads")?.ints.map(Int.init) ?? [0, 0, 0, 0]
                guard p.count == 4, p[0] == p[2], p[1] == p[3] else {
                    throw BiLRPError.unsupported("asymmetric padding \(p)")
                }
                return (p[0], p[1])
            case "VALID":
                return (0, 0)
            case "SAME_UPPER", "SAME_LOWER":
                // Symmetric when stride 1 and odd kernels: total padding k - 1.
                guard stride.allSatisfy({ $0 == 1 }), kernel.allSatisfy({ $0 % 2 == 1 }) else {
                    throw BiLRPError.unsupported("auto_pad \(auto) with stride \(stride) and kernel \(kernel): asymmetric padding")
                }
                return ((kernel[0] - 1) / 2, (kernel[1] - 1) / 2)
            default:
                throw BiLRPError.unsupported("auto_pad '\(auto)'")
            }
        }

        func conv(_ n: Onnx_NodeProto, _ label: String) throws -> Layer {
            let w = try constant(n, 1, label)
            guard w.shape.count == 4 else {
                throw BiLRPError.unsupported("only 2-D convolutions are supported")
            }
            let groups = attr(n, "group").map { Int($0.i) } ?? 1
            let d = attr(n, "dilations")?.ints.map(Int.init) ?? [1, 1]
            let k = attr(n, "kernel_shape")?.ints.map(Int.init) ?? [w.shape[2], w.shape[3]]
            let s = attr(n, "strides")?.ints.map(Int.init) ?? [1, 1]
            guard d.count == 2, k.count == 2, s.count == 2 else {
                throw BiLRPError.unsupported("dilations \(d), kernel \(k), strides \(s) (2-D only)")
            }
            // The kernel's span on the input decides the padding auto_pad asks for.
            let p = try pads(n, kernel: zip(k, d).map { ($0 - 1) * $1 + 1 }, stride: s)
            let bias = n.input.count > 2 && !n.input[2].isEmpty ? try constant(n, 2, label).data : nil
            do {
                return .conv2d(try Conv2d(
                    weight: w.data, bias: bias, outChannels: w.shape[0], inChannels: w.shape[1] * groups,
                    kernel: (k[0], k[1]), stride: (s[0], s[1]), padding: p, dilation: (d[0], d[1]), groups: groups))
            } catch let BiLRPError.invalidArgument(m) {
                throw BiLRPError.unsupported(m)
            }
        }

        /// Integers from an attribute (older opsets) or a constant input (newer ones); nil when neither.
        func integers(_ n: Onnx_NodeProto, attribute: String, input i: Int, _ label: String) throws -> [Int]? {
            if let a = attr(n, attribute) { return a.ints.map(Int.init) }
            guard i < n.input.count, !n.input[i].isEmpty else { return nil }
            guard let t = constants[n.input[i]] else {
                throw BiLRPError.unsupported("its input \(i) is computed, not a constant")
            }
            return t.data.map(ONNXImporter.index)
        }

        /// An ONNX axis of (N, C, H, W), or of a sequence's (N, T, D), as one of ours (a sequence's
        /// tokens are the width, its features the channels); the batch axis is not one.
        func axis(_ a: Int, sequence: Bool) throws -> Axes3 {
            if sequence {
                switch a < 0 ? a + 3 : a {
                case 1: return .width
                case 2: return .channels
                default: throw BiLRPError.unsupported("axis \(a) (only the token and feature axes of N, T, D)")
                }
            }
            switch a < 0 ? a + 4 : a {
            case 1: return .channels
            case 2: return .height
            case 3: return .width
            default: throw BiLRPError.unsupported("axis \(a) (only the channel, height and width axes of N, C, H, W)")
            }
        }

        func padding(_ n: Onnx_NodeProto, _ label: String, sequence: Bool) throws -> Padding3 {
            let mode = attr(n, "mode").map { String(decoding: $0.s, as: UTF8.self) } ?? "constant"
            guard mode == "constant" else { throw BiLRPError.unsupported("mode \(mode)") }
            guard let pads = try integers(n, attribute: "pads", input: 1, label) else {
                throw BiLRPError.unsupported("no pads")
            }
            let axes = try integers(n, attribute: "axes", input: 3, label) ?? Array(0..<(pads.count / 2))
            guard pads.count == 2 * axes.count else { throw BiLRPError.unsupported("\(pads.count) pads for \(axes.count) axes") }
            var before = Position3.zero, after = Position3.zero
            for (k, a) in axes.enumerated() {
                let (b, e) = (pads[k], pads[axes.count + k])
                if a == 0 || a == (sequence ? -3 : -4) {
                    guard b == 0, e == 0 else { throw BiLRPError.unsupported("padding of the batch axis") }
                    continue
                }
                switch try axis(a, sequence: sequence) {
                case .channels: before.channel = b; after.channel = e
                case .height: before.row = b; after.row = e
                default: before.column = b; after.column = e
                }
            }
            var value: Float = attr(n, "value")?.f ?? 0
            if n.input.count > 2, !n.input[2].isEmpty {
                guard let v = constants[n.input[2]], v.count == 1 else { throw BiLRPError.unsupported("a computed constant_value") }
                value = v.data[0]
            }
            do {
                return try Padding3(before: before, after: after, value: value)
            } catch { throw BiLRPError.unsupported("negative pads \(pads)") }
        }

        func slice(_ n: Onnx_NodeProto, _ label: String, sequence: Bool) throws -> Slice3 {
            guard let starts = try integers(n, attribute: "starts", input: 1, label),
                  let ends = try integers(n, attribute: "ends", input: 2, label), starts.count == ends.count else {
                throw BiLRPError.unsupported("starts and ends must be constants of one length")
            }
            let axes = try integers(n, attribute: "axes", input: 3, label) ?? Array(0..<starts.count)
            let steps = try integers(n, attribute: "steps", input: 4, label) ?? starts.map { _ in 1 }
            guard axes.count == starts.count, steps.allSatisfy({ $0 == 1 }) else {
                throw BiLRPError.unsupported("steps \(steps) (only 1)")
            }
            var sl = Slice3()
            for (k, a) in axes.enumerated() {
                if a == 0 || a == (sequence ? -3 : -4) {  // the batch axis: only a slice that keeps the one input
                    guard starts[k] == 0 || starts[k] == -1, ends[k] >= 1 else {
                        throw BiLRPError.unsupported("a slice of the batch axis")
                    }
                    continue
                }
                switch try axis(a, sequence: sequence) {
                case .channels: sl.start.channel = starts[k]; sl.end.channel = ends[k]
                case .height: sl.start.row = starts[k]; sl.end.row = ends[k]
                default: sl.start.column = starts[k]; sl.end.column = ends[k]
                }
            }
            return sl
        }

        func reduction(_ n: Onnx_NodeProto, _ label: String, sequence: Bool) throws -> Axes3 {
            let list = try integers(n, attribute: "axes", input: 1, label)
            if list == nil || list!.isEmpty, (attr(n, "noop_with_empty_axes")?.i ?? 0) != 0 {
                throw BiLRPError.unsupported("noop_with_empty_axes with no axes")
            }
            let axes = list?.isEmpty == false ? list! : sequence ? [1, 2] : [1, 2, 3]
            var set: Axes3 = []
            for a in axes { set.formUnion(try axis(a, sequence: sequence)) }
            // keepdims=0 drops the reduced axes; kept in memory order only when they are the last ones
            // (N, C) after a spatial sum: our (C, 1, 1) holds the same values in the same order. Of a
            // sequence, the tokens (mean pooling: the vector (N, D)) or everything.
            let allowed: [Axes3] = sequence ? [[.width], [.channels, .width]] : [[.width], .spatial, [.channels, .height, .width]]
            if (attr(n, "keepdims")?.i ?? 1) == 0, !allowed.contains(set) {
                throw BiLRPError.unsupported("keepdims=0 over axes \(axes) (only over trailing axes)")
            }
            return set
        }

        func pool(_ n: Onnx_NodeProto) throws -> Layer {
            guard let k = attr(n, "kernel_shape")?.ints.map(Int.init), k.count == 2 else {
                throw BiLRPError.unsupported("without a 2-D kernel_shape")
            }
            if let c = attr(n, "ceil_mode")?.i, c != 0 { throw BiLRPError.unsupported("ceil_mode") }
            if let d = attr(n, "dilations")?.ints, d.contains(where: { $0 != 1 }) {
                throw BiLRPError.unsupported("dilated")
            }
            let s = attr(n, "strides")?.ints.map(Int.init) ?? [1, 1]
            let p = try pads(n, kernel: k, stride: s)
            let pool = Pool2d(kernel: (k[0], k[1]), stride: (s[0], s[1]), padding: p)
            if n.opType == "MaxPool" { return .maxPool2d(pool) }
            if (p.0 > 0 || p.1 > 0) && (attr(n, "count_include_pad")?.i ?? 0) == 0 {
                throw BiLRPError.unsupported("padding with count_include_pad=0")
            }
            return .avgPool2d(pool)
        }
    }

    /// The PyTorch module index in a torch-exported node name: `/features/features.12/Conv` -> 12,
    /// `/3/MaxPool` -> 3.
    static func moduleIndex(_ name: String) -> Int? {
        let parts = name.split(separator: "/")
        guard parts.count >= 2 else { return nil }
        let module = parts[parts.count - 2]
        let last = module.split(separator: ".").last.map(String.init) ?? String(module)
        return Int(last)
    }

    /// The torch modules that enclose a torch-exported node, outermost first, as torch names them
    /// (`named_modules`): `/layer1/layer1.0/conv1/Conv` -> layer1, layer1.0, layer1.0.conv1. The
    /// exporter writes a child of a Sequential qualified (`layer1.0`) and others by attribute
    /// (`conv1`); both are qualified here. Empty for names that are not scope paths.
    public static func modulePaths(_ nodeName: String) -> [String] {
        guard nodeName.hasPrefix("/") else { return [] }
        var paths: [String] = []
        for part in nodeName.split(separator: "/").dropLast().map(String.init) {
            guard let outer = paths.last else { paths.append(part); continue }
            paths.append(part.hasPrefix(outer + ".") ? part : outer + "." + part)
        }
        return paths
    }

    /// A dense layer whose columns are in (H, W, C) order reordered to (C, H, W).
    static func channelsLastColumns(_ lin: Linear, _ s: Shape3, label: String) throws -> Linear {
        let inF = lin.inFeatures
        guard s.count == inF else {
            throw BiLRPError.shapeMismatch(what: "dense layer \(label) after a channels-last flatten",
                                           expected: "\(s.count) inputs", found: "\(inF)")
        }
        var weight = lin.weight
        let plane = s.height * s.width
        for o in 0..<lin.outFeatures {
            for c in 0..<s.channels {
                for p in 0..<plane { weight[o * inF + c * plane + p] = lin.weight[o * inF + p * s.channels + c] }
            }
        }
        return try Linear(weight: weight, bias: lin.bias, inFeatures: inF, outFeatures: lin.outFeatures)
    }

    static func transpose(_ t: Tensor) -> [Float] {
        let (r, c) = (t.shape[0], t.shape[1])
        var out = [Float](repeating: 0, count: r * c)
        for i in 0..<r { for j in 0..<c { out[j * r + i] = t.data[i * c + j] } }
        return out
    }

    /// An int64 read as Float as an index; INT64_MAX and the like (open ends) clamped to what Int holds.
    static func index(_ v: Float) -> Int {
        v >= 1e15 ? Int.max : v <= -1e15 ? Int.min : Int(v)
    }

    /// The value of a node whose inputs are all constants, for the ops torch writes as arithmetic
    /// on constants (F.pad's pads: ConstantOfShape, Concat, Reshape, a reversing Slice, Transpose,
    /// Cast) and Unsqueeze / Squeeze / Identity; nil for other ops, a missing input, or arguments
    /// that do not fit (then the node stays computed, and a reader that needs a constant says so
    /// with its name). Folded values are shapes and pads: at most 2^20 of them.
    static func fold(_ n: Onnx_NodeProto, _ ins: [Tensor?], file: String) throws -> Tensor? {
        func attr(_ k: String) -> Onnx_AttributeProto? { n.attribute.first { $0.name == k } }
        func ints(_ i: Int, _ k: String) -> [Int]? {
            if let a = attr(k) { return a.ints.map(Int.init) }
            return i < ins.count ? ins[i]?.data.map(index) : nil
        }
        guard let x = ins.first ?? nil else { return nil }
        let shape = x.shape
        func strides(_ s: [Int]) -> [Int] {
            var st = [Int](repeating: 1, count: s.count)
            for d in stride(from: s.count - 2, through: 0, by: -1) { st[d] = st[d + 1] * s[d + 1] }
            return st
        }
        switch n.opType {
        case "Identity", "Cast":
            return x
        case "ConstantOfShape":
            let dims = x.data.map(index)
            guard let count = Tensor.count(dims), count <= 1 << 20 else { return nil }
            let value = attr("value").flatMap { try? tensor($0.t, file: file) }?.data.first ?? 0
            return try Tensor(shape: dims, data: [Float](repeating: value, count: count))
        case "Concat":
            let parts = ins.compactMap { $0 }
            guard parts.count == ins.count, let a = attr("axis")?.i else { return nil }
            let axis = Int(a) < 0 ? Int(a) + shape.count : Int(a)
            guard (0..<shape.count).contains(axis), parts.allSatisfy({ t in
                t.shape.count == shape.count && t.shape.indices.allSatisfy { $0 == axis || t.shape[$0] == shape[$0] }
            }) else { return nil }
            let outer = shape[..<axis].reduce(1, *)
            var data: [Float] = []
            for o in 0..<outer {
                for t in parts {
                    let inner = t.shape[axis...].reduce(1, *)
                    data += t.data[(o * inner)..<((o + 1) * inner)]
                }
            }
            var out = shape
            out[axis] = parts.reduce(0) { $0 + $1.shape[axis] }
            return try Tensor(shape: out, data: data)
        case "Reshape":
            guard var dims = ints(1, "shape"), dims.allSatisfy({ (-1...max(x.count, 1)).contains($0) }) else { return nil }
            for d in dims.indices where dims[d] == 0 && d < shape.count { dims[d] = shape[d] }
            if let free = dims.firstIndex(of: -1) {
                dims[free] = 1
                guard let known = Tensor.count(dims) else { return nil }
                dims[free] = x.count / max(known, 1)
            }
            return try Tensor(shape: dims, data: x.data)
        case "Unsqueeze":
            guard let axes = ints(1, "axes") else { return nil }
            var dims = shape
            for a in axes.map({ $0 < 0 ? $0 + shape.count + axes.count : $0 }).sorted() {
                guard (0...dims.count).contains(a) else { return nil }
                dims.insert(1, at: a)
            }
            return try Tensor(shape: dims, data: x.data)
        case "Squeeze":
            let axes = Set((ints(1, "axes") ?? shape.indices.filter { shape[$0] == 1 }).map { $0 < 0 ? $0 + shape.count : $0 })
            return try Tensor(shape: shape.indices.filter { !axes.contains($0) }.map { shape[$0] }, data: x.data)
        case "Transpose":
            let perm = attr("perm")?.ints.map(Int.init) ?? Array(shape.indices.reversed())
            guard perm.sorted() == Array(shape.indices) else { return nil }
            let out = perm.map { shape[$0] }, st = strides(shape), ost = strides(out)
            var data = [Float](repeating: 0, count: x.count)
            for i in 0..<x.count {
                var src = 0
                for d in out.indices { src += (i / ost[d]) % out[d] * st[perm[d]] }
                data[i] = x.data[src]
            }
            return try Tensor(shape: out, data: data)
        case "Slice":
            guard let starts = ints(1, "starts"), let ends = ints(2, "ends") else { return nil }
            let axes = ints(3, "axes") ?? Array(starts.indices), steps = ints(4, "steps") ?? starts.map { _ in 1 }
            guard ends.count == starts.count, axes.count == starts.count, steps.count == starts.count else { return nil }
            // Per axis the indices kept, in order (numpy's rules, negative steps included).
            var keep = shape.map { Array(0..<$0) }
            for (k, a0) in axes.enumerated() {
                let a = a0 < 0 ? a0 + shape.count : a0
                guard (0..<shape.count).contains(a), steps[k] != 0 else { return nil }
                let n = shape[a], step = steps[k]
                func wrap(_ v: Int) -> Int { v < 0 ? v + n : v }
                var idx: [Int] = []
                if step > 0 {
                    var i = min(max(wrap(starts[k]), 0), n)
                    let e = min(max(wrap(ends[k]), 0), n)
                    while i < e { idx.append(i); i += step }
                } else {
                    var i = min(max(wrap(starts[k]), -1), n - 1)
                    let e = min(max(wrap(ends[k]), -1), n - 1)
                    while i > e { idx.append(i); i += step }
                }
                keep[a] = idx
            }
            let out = keep.map(\.count), st = strides(shape), ost = strides(out)
            let count = out.reduce(1, *)
            var data = [Float](repeating: 0, count: count)
            for i in 0..<count {
                var src = 0
                for d in out.indices { src += keep[d][(i / ost[d]) % out[d]] * st[d] }
                data[i] = x.data[src]
            }
            return try Tensor(shape: out, data: data)
        default:
            return nil
        }
    }

    static func tensor(_ t: Onnx_TensorProto, file: String) throws -> Tensor {
        let shape = t.dims.map(Int.init)
        guard let count = Tensor.count(shape), count <= 1 << 40 else {
            throw BiLRPError.io("\(file): tensor '\(t.name)' has impossible dims \(shape)")
        }
        if t.dataLocation == .external {
            throw BiLRPError.unsupported("\(file): tensor '\(t.name)' uses external data; save the model with its weights inside")
        }
        var values: [Float]
        let raw = t.rawData
        switch t.dataType {
        case 1:  // FLOAT
            if !raw.isEmpty {
                guard raw.count == 4 * count else { throw BiLRPError.io("\(file): tensor '\(t.name)' has \(raw.count) bytes for \(count) floats") }
                values = raw.withUnsafeBytes { b in (0..<count).map { Float(bitPattern: b.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self).littleEndian) } }
            } else { values = t.floatData }
        case 10:  // FLOAT16
            values = raw.withUnsafeBytes { b in (0..<count).map { Float(Float16(bitPattern: b.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self).littleEndian)) } }
        case 11:  // DOUBLE
            if !raw.isEmpty {
                values = raw.withUnsafeBytes { b in (0..<count).map { Float(Double(bitPattern: b.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self).littleEndian)) } }
            } else { values = t.doubleData.map(Float.init) }
        case 7:  // INT64 (shapes, indices)
            if !raw.isEmpty {
                values = raw.withUnsafeBytes { b in (0..<count).map { Float(Int64(littleEndian: b.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) } }
            } else { values = t.int64Data.map(Float.init) }
        case 6:  // INT32
            values = raw.isEmpty ? t.int32Data.map(Float.init)
                : raw.withUnsafeBytes { b in (0..<count).map { Float(Int32(littleEndian: b.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) } }
        default:
            values = []  // other dtypes are never weights here; kept empty and rejected where used
        }
        guard values.count == count else {
            return try Tensor(shape: [0], data: [])
        }
        return try Tensor(shape: shape, data: values)
    }
}
