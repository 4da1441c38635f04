import BiLRP
import Foundation
import SwiftProtobuf

/// A sequential CNN read from an ONNX file.
public struct ONNXModel: Sendable {
    /// The supported chain of layers from the input (up to the cut, when one was asked for).
    public var model: SequentialModel
    /// The ONNX node behind each layer index (`"-"` for an index the exporter folded away).
    public var nodeNames: [String]
    /// True when the file's input is channels-last (N, H, W, C) and a Transpose makes it NCHW;
    /// this library always takes (C, H, W), so the transpose is absorbed.
    public var channelsLastInput: Bool
    /// The file's static input size (C, H, W), when it declares one.
    public var inputShape: Shape3?
    /// Ops after the supported chain, as "op X at node Y": layers past them cannot be used.
    public var unsupported: [String]
    public var producer: String
    /// How layer indices were assigned: "module names" (torch export: `/features/features.2/Relu` is
    /// index 2, matching torchvision) or "node order" (one index per layer node, as torchvision numbers
    /// a sequential model; layout Transposes, Identity, Dropout and Softmax take none).
    public var numbering: String
}

/// Imports sequential CNN graphs from ONNX: Conv, Relu, MaxPool, AveragePool, GlobalAveragePool,
/// BatchNormalization (folded later), Flatten, Reshape (as a flatten), Gemm, MatMul + Add,
/// Transpose (channels-last input, or channels-last flatten before a dense layer), Identity,
/// Dropout, Softmax (dropped for explanation); explicit pads and auto_pad.
public enum ONNXImporter {
    /// Where to cut the graph.
    public enum Cut: Sendable, Equatable {
        /// Keep layers [0, L) (`features[:L]`; for VGG-16, 31 ends after pool5).
        case layers(Int)
        /// Keep everything up to and including the layer produced by this node.
        case node(String)
    }

    public static func load(path: String, cut: Cut? = nil) throws -> ONNXModel {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw BiLRPError.io("cannot read ONNX file '\(path)'")
        }
        return try load(data: data, name: path, cut: cut)
    }

    public static func load(data: Data, name: String = "ONNX model", cut: Cut? = nil) throws -> ONNXModel {
        let proto: Onnx_ModelProto
        do { proto = try Onnx_ModelProto(serializedBytes: data) } catch {
            throw BiLRPError.io("\(name): not a valid ONNX model (protobuf decoding failed: \(error))")
        }
        var b = try Builder(graph: proto.graph, name: name)
        try b.run()
        var model = ONNXModel(
            model: SequentialModel(b.layers.map(\.layer)), nodeNames: b.layers.map(\.node),
            channelsLastInput: b.channelsLastInput, inputShape: b.inputShape, unsupported: b.unsupported,
            producer: proto.producerName, numbering: b.numbering)
        guard let cut else { return model }
        let keep: Int
        switch cut {
        case let .layers(l):
            if l > model.model.layers.count, let first = model.unsupported.first {
                throw BiLRPError.unsupported("\(first) stops the import after layer \(model.model.layers.count - 1); layer \(l) cannot be reached")
            }
            keep = l
        case let .node(n):
            guard let i = model.nodeNames.firstIndex(of: n) else {
                throw BiLRPError.invalidArgument("\(name): no supported layer comes from a node named '\(n)'")
            }
            keep = i + 1
        }
        model.model = try model.model.truncated(to: keep)
        model.nodeNames = Array(model.nodeNames.prefix(keep))
        return model
    }

    // MARK: - Graph walk

    struct Builder {
        let graph: Onnx_GraphProto
        let name: String
        var constants: [String: Tensor] = [:]
        var layers: [(layer: Layer, node: String, nameIndex: Int?)] = []
        var channelsLastInput = false
        var inputShape: Shape3? = nil
        var unsupported: [String] = []
        var numbering = "node order"
        /// Set by Transpose(0, 2, 3, 1): the next flatten reads (H, W, C) order.
        var channelsLastFlatten = false
        var flattenedFrom: Shape3? = nil

        init(graph: Onnx_GraphProto, name: String) throws {
            self.graph = graph
            self.name = name
            for t in graph.initializer { constants[t.name] = try ONNXImporter.tensor(t, file: name) }
            for n in graph.node where n.opType == "Constant" {
                if let a = n.attribute.first(where: { $0.name == "value" }), a.hasT, let out = n.output.first {
                    constants[out] = try ONNXImporter.tensor(a.t, file: name)
                }
            }
        }

        mutating func run() throws {
            guard let input = graph.input.first(where: { constants[$0.name] == nil }) else {
                throw BiLRPError.io("\(name): the graph has no data input")
            }
            let dims = input.type.tensorType.shape.dim.map { { if case .dimValue(let v)? = $0.value { return Int(v) } else { return -1 } }($0) }
            defer {
                finishNumbering()
                if dims.count == 4, dims.dropFirst().allSatisfy({ $0 > 0 }) {
                    inputShape = channelsLastInput ? Shape3(dims[3], dims[1], dims[2]) : Shape3(dims[1], dims[2], dims[3])
                }
            }
            var current = input.name
            let nodes = graph.node
            var i = 0
            while i < nodes.count {
                let node = nodes[i]
                i += 1
                guard node.input.first == current, let out = node.output.first else { continue }
                let label = node.name.isEmpty ? out : node.name
                func add(_ layer: Layer) { layers.append((layer, label, ONNXImporter.moduleIndex(label))) }
                switch node.opType {
                case "Identity", "Dropout", "Softmax":
                    break
                case "Transpose":
                    let perm = attr(node, "perm")?.ints.map(Int.init) ?? []
                    if layers.isEmpty && perm == [0, 3, 1, 2] {
                        channelsLastInput = true
                    } else if perm == [0, 2, 3, 1] {
                        channelsLastFlatten = true
                    } else {
                        unsupported.append("op Transpose (perm \(perm)) at node \(label)"); return
                    }
                case "Conv":
                    add(try conv(node, label))
                case "Relu":
                    add(.relu)
                case "MaxPool", "AveragePool":
                    add(try pool(node, label))
                case "GlobalAveragePool":
                    add(.adaptiveAvgPool2d(height: 1, width: 1))
                case "BatchNormalization":
                    let p = try (1...4).map { try constant(node, $0, label) }
                    add(.batchNorm2d(try BatchNorm2d(
                        weight: p[0].data, bias: p[1].data, runningMean: p[2].data, runningVar: p[3].data,
                        eps: attr(node, "epsilon")?.f ?? 1e-5)))
                case "Flatten", "Reshape":
                    if node.opType == "Flatten", let axis = attr(node, "axis")?.i, axis != 1 {
                        unsupported.append("op Flatten with axis \(axis) at node \(label)"); return
                    }
                    if node.opType == "Reshape", node.input.count > 1, let shape = constants[node.input[1]],
                       !(shape.count == 2 && (shape.data[1] == -1 || shape.data[0] != 0)) {
                        unsupported.append("op Reshape to \(shape.data.map { Int($0) }) at node \(label) (only a flatten to (N, D) is supported)")
                        return
                    }
                    if channelsLastFlatten {
                        flattenedFrom = try shapeSoFar(dims)
                    }
                    add(.flatten)
                case "Gemm":
                    let w = try constant(node, 1, label)
                    let transB = attr(node, "transB")?.i ?? 0, transA = attr(node, "transA")?.i ?? 0
                    guard transA == 0, w.shape.count == 2 else {
                        unsupported.append("op Gemm with transA=1 at node \(label)"); return
                    }
                    let alpha = attr(node, "alpha")?.f ?? 1, beta = attr(node, "beta")?.f ?? 1
                    let (outF, inF) = transB == 1 ? (w.shape[0], w.shape[1]) : (w.shape[1], w.shape[0])
                    var weight = transB == 1 ? w.data : ONNXImporter.transpose(w)
                    weight = weight.map { $0 * alpha }
                    let bias = node.input.count > 2 ? try constant(node, 2, label).data.map { $0 * beta } : nil
                    add(.linear(try linear(weight, bias, inF, outF, label)))
                case "MatMul":
                    let w = try constant(node, 1, label)
                    guard w.shape.count == 2 else {
                        unsupported.append("op MatMul with a \(w.shape.count)-D weight at node \(label)"); return
                    }
                    var bias: [Float]? = nil
                    var output = out
                    // MatMul + Add(bias) is one linear layer.
                    if let next = nodes[i...].first(where: { $0.input.contains(out) }), next.opType == "Add",
                       let b = next.input.first(where: { $0 != out }).flatMap({ constants[$0] }), b.count == w.shape[1] {
                        bias = b.data
                        output = next.output[0]
                        i = nodes.firstIndex(where: { $0 == next })! + 1
                    }
                    add(.linear(try linear(ONNXImporter.transpose(w), bias, w.shape[0], w.shape[1], label)))
                    current = output
                    continue
                default:
                    unsupported.append("op \(node.opType) at node \(label)")
                    return
                }
                current = out
            }
        }

        /// Torch exports name nodes after their module (`/features/features.12/Conv`): when every layer
        /// has such a name and the indices increase, use them (filling folded-away indices with
        /// identities), so indices match the PyTorch model even where the exporter fused BatchNorm.
        mutating func finishNumbering() {
            let idx = layers.compactMap(\.nameIndex)
            guard !layers.isEmpty, idx.count == layers.count, zip(idx, idx.dropFirst()).allSatisfy({ $0 < $1 }) else { return }
            var out: [(layer: Layer, node: String, nameIndex: Int?)] = []
            for l in layers {
                while out.count < l.nameIndex! { out.append((.identity, "-", nil)) }
                out.append(l)
            }
            layers = out
            numbering = "module names"
        }

        func shapeSoFar(_ dims: [Int]) throws -> Shape3 {
            guard dims.count == 4, dims.dropFirst().allSatisfy({ $0 > 0 }) else {
                throw BiLRPError.unsupported("\(name): a channels-last flatten needs a static input size")
            }
            let s = channelsLastInput ? Shape3(dims[3], dims[1], dims[2]) : Shape3(dims[1], dims[2], dims[3])
            return try SequentialModel(layers.map(\.layer)).shapes(for: s).last ?? s
        }

        mutating func linear(_ w: [Float], _ b: [Float]?, _ inF: Int, _ outF: Int, _ label: String) throws -> Linear {
            var weight = w
            if channelsLastFlatten, let s = flattenedFrom {
                // Columns are in (H, W, C) order; reorder them to this library's (C, H, W) flatten.
                guard s.count == inF else {
                    throw BiLRPError.shapeMismatch(what: "dense layer \(label) after a channels-last flatten",
                                                   expected: "\(s.count) inputs", found: "\(inF)")
                }
                for o in 0..<outF {
                    for c in 0..<s.channels {
                        for p in 0..<(s.height * s.width) {
                            weight[o * inF + c * s.height * s.width + p] = w[o * inF + p * s.channels + c]
                        }
                    }
                }
                channelsLastFlatten = false
            }
            return try Linear(weight: weight, bias: b, inFeatures: inF, outFeatures: outF)
        }

        func attr(_ n: Onnx_NodeProto, _ key: String) -> Onnx_AttributeProto? { n.attribute.first { $0.name == key } }

        func constant(_ n: Onnx_NodeProto, _ i: Int, _ label: String) throws -> Tensor {
            guard i < n.input.count, let t = constants[n.input[i]] else {
                throw BiLRPError.unsupported("\(n.opType) at node \(label): input \(i) must be a constant (initializer)")
            }
            return t
        }

        func pads(_ n: Onnx_NodeProto, _ label: String, kernel: [Int], stride: [Int]) throws -> (Int, Int) {
            let auto = attr(n, "auto_pad").map { String(decoding: $0.s, as: UTF8.self) } ?? "NOTSET"
            switch auto {
            case "NOTSET", "":
                let p = attr(n, "pads")?.ints.map(Int.init) ?? [0, 0, 0, 0]
                guard p.count == 4, p[0] == p[2], p[1] == p[3] else {
                    throw BiLRPError.unsupported("asymmetric padding \(p) at node \(label)")
                }
                return (p[0], p[1])
            case "VALID":
                return (0, 0)
            case "SAME_UPPER", "SAME_LOWER":
                // Symmetric when stride 1 and odd kernels: total padding k - 1.
                guard stride.allSatisfy({ $0 == 1 }), kernel.allSatisfy({ $0 % 2 == 1 }) else {
                    throw BiLRPError.unsupported("auto_pad \(auto) with stride \(stride) and kernel \(kernel) at node \(label) (asymmetric padding)")
                }
                return ((kernel[0] - 1) / 2, (kernel[1] - 1) / 2)
            default:
                throw BiLRPError.unsupported("auto_pad '\(auto)' at node \(label)")
            }
        }

        func conv(_ n: Onnx_NodeProto, _ label: String) throws -> Layer {
            let w = try constant(n, 1, label)
            guard w.shape.count == 4 else {
                throw BiLRPError.unsupported("Conv at node \(label): only 2-D convolutions are supported")
            }
            if let g = attr(n, "group")?.i, g != 1 { throw BiLRPError.unsupported("grouped Conv (group \(g)) at node \(label)") }
            if let d = attr(n, "dilations")?.ints, d.contains(where: { $0 != 1 }) {
                throw BiLRPError.unsupported("dilated Conv at node \(label)")
            }
            let k = attr(n, "kernel_shape")?.ints.map(Int.init) ?? [w.shape[2], w.shape[3]]
            let s = attr(n, "strides")?.ints.map(Int.init) ?? [1, 1]
            let p = try pads(n, label, kernel: k, stride: s)
            let bias = n.input.count > 2 && !n.input[2].isEmpty ? try constant(n, 2, label).data : nil
            return .conv2d(try Conv2d(
                weight: w.data, bias: bias, outChannels: w.shape[0], inChannels: w.shape[1], kernel: (k[0], k[1]),
                stride: (s[0], s[1]), padding: p))
        }

        func pool(_ n: Onnx_NodeProto, _ label: String) throws -> Layer {
            guard let k = attr(n, "kernel_shape")?.ints.map(Int.init), k.count == 2 else {
                throw BiLRPError.unsupported("\(n.opType) at node \(label) without a 2-D kernel_shape")
            }
            if let c = attr(n, "ceil_mode")?.i, c != 0 { throw BiLRPError.unsupported("ceil_mode at node \(label)") }
            if let d = attr(n, "dilations")?.ints, d.contains(where: { $0 != 1 }) {
                throw BiLRPError.unsupported("dilated \(n.opType) at node \(label)")
            }
            let s = attr(n, "strides")?.ints.map(Int.init) ?? [1, 1]
            let p = try pads(n, label, kernel: k, stride: s)
            let pool = Pool2d(kernel: (k[0], k[1]), stride: (s[0], s[1]), padding: p)
            if n.opType == "MaxPool" { return .maxPool2d(pool) }
            if (p.0 > 0 || p.1 > 0) && (attr(n, "count_include_pad")?.i ?? 0) == 0 {
                throw BiLRPError.unsupported("AveragePool with padding and count_include_pad=0 at node \(label)")
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

    static func transpose(_ t: Tensor) -> [Float] {
        let (r, c) = (t.shape[0], t.shape[1])
        var out = [Float](repeating: 0, count: r * c)
        for i in 0..<r { for j in 0..<c { out[j * r + i] = t.data[i * c + j] } }
        return out
    }

    static func tensor(_ t: Onnx_TensorProto, file: String) throws -> Tensor {
        let shape = t.dims.map(Int.init)
        let count = shape.reduce(1, *)
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
