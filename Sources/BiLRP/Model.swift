/// A feed-forward network as a list of layers, numbered like PyTorch's `nn.Sequential`.
public struct SequentialModel: Sendable, Equatable {
    public var layers: [Layer]

    public init(_ layers: [Layer]) { self.layers = layers }

    /// The first `count` layers, `features[:count]` in PyTorch terms: for VGG-16, `count = 31` ends
    /// after pool5 (index 30), as in the paper.
    public func truncated(to count: Int) throws -> SequentialModel {
        guard count >= 1, count <= layers.count else {
            throw BiLRPError.invalidLayerIndex(count, count: layers.count)
        }
        return SequentialModel(Array(layers.prefix(count)))
    }

    /// Shapes after each layer for an input shape; throws at the first layer that does not fit.
    public func shapes(for input: Shape3) throws -> [Shape3] {
        var s = input
        var out: [Shape3] = []
        for (i, l) in layers.enumerated() {
            s = try l.outputShape(s, index: i)
            out.append(s)
        }
        return out
    }

    public var parameterCount: Int { layers.reduce(0) { $0 + $1.parameterCount } }
}

/// A layer with its index in the original model; canonization keeps indices stable.
public struct IndexedLayer: Sendable {
    public var index: Int
    public var layer: Layer
}

extension SequentialModel {
    /// The model prepared for explanation: each BatchNorm2d folded into the convolution before it
    /// (w' = w g / sqrt(v + e), b' = (b - m) g / sqrt(v + e) + beta) and dropout removed. Layer
    /// indices are kept, so composites keep referring to the original numbering.
    public func canonized() throws -> [IndexedLayer] {
        var out: [IndexedLayer] = []
        for (i, layer) in layers.enumerated() {
            switch layer {
            case .dropout, .identity:
                continue
            case let .batchNorm2d(bn):
                guard let last = out.last, case var .conv2d(conv) = last.layer else {
                    throw BiLRPError.unsupported(
                        "BatchNorm2d at layer \(i) does not follow a convolution, so it cannot be folded")
                }
                try conv.fold(bn, at: "layer \(i)")
                out[out.count - 1].layer = .conv2d(conv)
            default:
                out.append(IndexedLayer(index: i, layer: layer))
            }
        }
        return out
    }
}

/// Where named weight tensors come from (a safetensors file, an ONNX initializer list, a fixture).
public protocol TensorSource {
    /// The tensor with this name and its shape, or nil when absent.
    func tensor(named name: String) throws -> Tensor?
}

extension TensorSource {
    /// The named tensor, checked against the expected shape; errors name the tensor and both shapes.
    public func required(_ name: String, shape: [Int]) throws -> [Float] {
        guard let t = try tensor(named: name) else { throw BiLRPError.missingTensor(name) }
        guard t.shape == shape else {
            throw BiLRPError.shapeMismatch(what: "tensor '\(name)'", expected: "\(shape)", found: "\(t.shape)")
        }
        return t.data
    }
}

/// Tensors in memory by name.
public struct NamedTensors: TensorSource, Sendable {
    public var tensors: [String: Tensor]
    public init(_ tensors: [String: Tensor]) { self.tensors = tensors }
    public func tensor(named name: String) throws -> Tensor? { tensors[name] }
}

/// The VGG family as in torchvision (`vgg11` ... `vgg19`, with or without batch norm): the
/// convolutional part `features`, whose indices match torchvision's.
public enum VGG: String, Sendable, CaseIterable {
    case vgg11, vgg13, vgg16, vgg19

    static let maxPool = -1
    var configuration: [Int] {
        let m = VGG.maxPool
        switch self {
        case .vgg11: return [64, m, 128, m, 256, 256, m, 512, 512, m, 512, 512, m]
        case .vgg13: return [64, 64, m, 128, 128, m, 256, 256, m, 512, 512, m, 512, 512, m]
        case .vgg16: return [64, 64, m, 128, 128, m, 256, 256, 256, m, 512, 512, 512, m, 512, 512, 512, m]
        case .vgg19:
            return [64, 64, m, 128, 128, m, 256, 256, 256, 256, m, 512, 512, 512, 512, m, 512, 512, 512, 512, m]
        }
    }

    /// Number of layers in `features` (31 for VGG-16, 44 for VGG-16-BN).
    public func featureCount(batchNorm: Bool = false) -> Int {
        configuration.reduce(0) { $0 + ($1 == VGG.maxPool ? 1 : (batchNorm ? 3 : 2)) }
    }

    /// `features[:layers]` with weights read from `source` under torchvision's names
    /// (`features.0.weight`, `features.0.bias`, and for batch norm `running_mean`, `running_var`).
    public func features(
        layers count: Int? = nil, batchNorm: Bool = false, weights source: any TensorSource
    ) throws -> SequentialModel {
        try build(count: count, batchNorm: batchNorm) { name, shape in try source.required(name, shape: shape) }
    }

    /// `features[:layers]` with seeded random weights (He-normal) and small random nonzero biases:
    /// for benchmarks and tests, where the arithmetic is what matters.
    public func features(layers count: Int? = nil, batchNorm: Bool = false, seed: UInt64) throws -> SequentialModel {
        var rng = SplitMix64(seed: seed)
        return try build(count: count, batchNorm: batchNorm) { name, shape in
            let n = shape.reduce(1, *)
            if name.hasSuffix("running_var") { return (0..<n).map { _ in 0.5 + Float(rng.nextUniform()) } }
            if shape.count == 4 {
                let std = (2.0 / Double(shape[1] * shape[2] * shape[3])).squareRoot()
                return (0..<n).map { _ in Float(rng.nextNormal() * std) }
            }
            return (0..<n).map { _ in Float(rng.nextNormal() * 0.05) }
        }
    }

    private func build(
        count: Int?, batchNorm: Bool, weight: (String, [Int]) throws -> [Float]
    ) throws -> SequentialModel {
        let total = featureCount(batchNorm: batchNorm)
        let keep = count ?? total
        guard keep >= 1, keep <= total else { throw BiLRPError.invalidLayerIndex(keep, count: total) }
        var layers: [Layer] = []
        var channels = 3
        for v in configuration {
            if layers.count >= keep { break }
            if v == VGG.maxPool {
                layers.append(.maxPool2d(Pool2d(kernel: (2, 2))))
                continue
            }
            let i = layers.count
            let w = try weight("features.\(i).weight", [v, channels, 3, 3])
            let b = try weight("features.\(i).bias", [v])
            layers.append(.conv2d(try Conv2d(
                weight: w, bias: b, outChannels: v, inChannels: channels, kernel: (3, 3), padding: (1, 1))))
            if batchNorm && layers.count < keep {
                let j = layers.count
                layers.append(.batchNorm2d(try BatchNorm2d(
                    weight: try weight("features.\(j).weight", [v]), bias: try weight("features.\(j).bias", [v]),
                    runningMean: try weight("features.\(j).running_mean", [v]),
                    runningVar: try weight("features.\(j).running_var", [v]))))
            }
            if layers.count < keep { layers.append(.relu) }
            channels = v
        }
        return SequentialModel(Array(layers.prefix(keep)))
    }
}
