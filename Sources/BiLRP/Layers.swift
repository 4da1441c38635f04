/// A 2-D convolution as `torch.nn.Conv2d`: any kernel, stride, zero padding, dilation and groups
/// (depthwise when groups = inChannels). Weight (outChannels, inChannels / groups, kernelH, kernelW).
public struct Conv2d: Sendable, Equatable {
    /// (outChannels, inChannels / groups, kernelH, kernelW), C order.
    public var weight: [Float]
    public var bias: [Float]?
    public var outChannels: Int, inChannels: Int
    public var kernel: (Int, Int) { (kernelH, kernelW) }
    public var kernelH: Int, kernelW: Int
    public var strideH: Int, strideW: Int
    public var padH: Int, padW: Int
    public var dilationH: Int, dilationW: Int
    public var groups: Int

    public init(
        weight: [Float], bias: [Float]?, outChannels: Int, inChannels: Int, kernel: (Int, Int),
        stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0), dilation: (Int, Int) = (1, 1), groups: Int = 1
    ) throws {
        guard kernel.0 > 0, kernel.1 > 0, stride.0 > 0, stride.1 > 0, padding.0 >= 0, padding.1 >= 0,
              dilation.0 > 0, dilation.1 > 0 else {
            throw BiLRPError.invalidArgument("conv: kernel, stride and dilation must be positive, padding non-negative")
        }
        guard groups > 0, inChannels % groups == 0, outChannels % groups == 0 else {
            throw BiLRPError.invalidArgument(
                "conv: groups \(groups) must divide the input channels \(inChannels) and the output channels \(outChannels)")
        }
        let expected = outChannels * (inChannels / groups) * kernel.0 * kernel.1
        guard weight.count == expected else {
            throw BiLRPError.shapeMismatch(
                what: "conv weight", expected: "[\(outChannels), \(inChannels / groups), \(kernel.0), \(kernel.1)]",
                found: "\(weight.count) values")
        }
        if let bias, bias.count != outChannels {
            throw BiLRPError.shapeMismatch(what: "conv bias", expected: "[\(outChannels)]", found: "[\(bias.count)]")
        }
        self.weight = weight; self.bias = bias
        self.outChannels = outChannels; self.inChannels = inChannels
        self.kernelH = kernel.0; self.kernelW = kernel.1
        self.strideH = stride.0; self.strideW = stride.1
        self.padH = padding.0; self.padW = padding.1
        self.dilationH = dilation.0; self.dilationW = dilation.1
        self.groups = groups
    }

    /// No dilation: the kernels run the weight as it is.
    public var isUndilated: Bool { dilationH == 1 && dilationW == 1 }

    /// The extent of the kernel on the input, (k - 1) d + 1.
    public var spanH: Int { (kernelH - 1) * dilationH + 1 }
    public var spanW: Int { (kernelW - 1) * dilationW + 1 }

    /// The weight as an undilated convolution of the kernel's span, (outChannels, inChannels /
    /// groups, spanH, spanW), with rho applied to the layer's own weights and zeros between dilated
    /// taps. Rules see exactly the layer's weights: `flat` (rho = 1) sets the real taps only. Groups
    /// stay groups: the kernels run them natively (`ConvGeometry.groups`).
    public func spanWeight(_ rho: WeightModifier = .identity) -> [Float] {
        if isUndilated { return rho == .identity ? weight : weight.map(rho.apply) }
        let perIn = inChannels / groups
        var span = [Float](repeating: 0, count: outChannels * perIn * spanH * spanW)
        for o in 0..<outChannels {
            for c in 0..<perIn {
                for i in 0..<kernelH {
                    for j in 0..<kernelW {
                        let w = weight[((o * perIn + c) * kernelH + i) * kernelW + j]
                        span[((o * perIn + c) * spanH + i * dilationH) * spanW + j * dilationW] = rho.apply(w)
                    }
                }
            }
        }
        return span
    }

    public static func == (a: Conv2d, b: Conv2d) -> Bool {
        a.weight == b.weight && a.bias == b.bias && a.outChannels == b.outChannels
            && a.inChannels == b.inChannels && a.kernelH == b.kernelH && a.kernelW == b.kernelW
            && a.strideH == b.strideH && a.strideW == b.strideW && a.padH == b.padH && a.padW == b.padW
            && a.dilationH == b.dilationH && a.dilationW == b.dilationW && a.groups == b.groups
    }
}

/// A fully connected layer: y = W x + b with W of shape (outFeatures, inFeatures), as `torch.nn.Linear`:
/// on a vector, or on every token of a sequence (see `Shape3`).
public struct Linear: Sendable, Equatable {
    public var weight: [Float]
    public var bias: [Float]?
    public var inFeatures: Int, outFeatures: Int

    public init(weight: [Float], bias: [Float]?, inFeatures: Int, outFeatures: Int) throws {
        guard weight.count == inFeatures * outFeatures else {
            throw BiLRPError.shapeMismatch(
                what: "linear weight", expected: "[\(outFeatures), \(inFeatures)]", found: "\(weight.count) values")
        }
        if let bias, bias.count != outFeatures {
            throw BiLRPError.shapeMismatch(what: "linear bias", expected: "[\(outFeatures)]", found: "[\(bias.count)]")
        }
        self.weight = weight; self.bias = bias
        self.inFeatures = inFeatures; self.outFeatures = outFeatures
    }
}

/// Inference-mode batch normalization; folded into the preceding convolution before explaining.
public struct BatchNorm2d: Sendable, Equatable {
    public var weight: [Float], bias: [Float], runningMean: [Float], runningVar: [Float]
    public var eps: Float

    public init(weight: [Float], bias: [Float], runningMean: [Float], runningVar: [Float], eps: Float = 1e-5) throws {
        let n = weight.count
        guard bias.count == n, runningMean.count == n, runningVar.count == n else {
            throw BiLRPError.shapeMismatch(
                what: "batch norm parameters", expected: "4 vectors of \(n)",
                found: "[\(bias.count), \(runningMean.count), \(runningVar.count)]")
        }
        self.weight = weight; self.bias = bias; self.runningMean = runningMean
        self.runningVar = runningVar; self.eps = eps
    }
}

/// Window geometry of a pooling layer.
public struct Pool2d: Sendable, Equatable {
    public var kernelH: Int, kernelW: Int, strideH: Int, strideW: Int, padH: Int, padW: Int
    public init(kernel: (Int, Int), stride: (Int, Int)? = nil, padding: (Int, Int) = (0, 0)) {
        kernelH = kernel.0; kernelW = kernel.1
        strideH = stride?.0 ?? kernel.0; strideW = stride?.1 ?? kernel.1
        padH = padding.0; padW = padding.1
    }
}

/// One layer of a sequential model. Indices of layers in a model are those of PyTorch's
/// `nn.Sequential` (for VGG: torchvision's `features` numbering), and rule composites refer to them.
public enum Layer: Sendable, Equatable {
    case conv2d(Conv2d)
    case relu
    case maxPool2d(Pool2d)
    /// Zero padding is counted in the divisor (PyTorch's default `count_include_pad=True`).
    case avgPool2d(Pool2d)
    case adaptiveAvgPool2d(height: Int, width: Int)
    case flatten
    case linear(Linear)
    /// Identity at inference.
    case dropout
    /// Does nothing; stands where an exporter folded a layer away, so indices keep their meaning.
    case identity
    case batchNorm2d(BatchNorm2d)

    /// A short name for listings and errors, e.g. `Conv2d(3, 64, 3x3, s1, p1)`.
    public var name: String {
        switch self {
        case let .conv2d(c):
            func pair(_ a: Int, _ b: Int) -> String { a == b ? "\(a)" : "(\(a), \(b))" }
            return "Conv2d(\(c.inChannels), \(c.outChannels), \(c.kernelH)x\(c.kernelW), s\(pair(c.strideH, c.strideW)), "
                + "p\(pair(c.padH, c.padW))" + (c.dilationH == 1 && c.dilationW == 1 ? "" : ", d\(pair(c.dilationH, c.dilationW))")
                + (c.groups == 1 ? "" : ", g\(c.groups)") + ")"
        case .relu: return "ReLU"
        case let .maxPool2d(p): return "MaxPool2d(\(p.kernelH)x\(p.kernelW), s\(p.strideH))"
        case let .avgPool2d(p): return "AvgPool2d(\(p.kernelH)x\(p.kernelW), s\(p.strideH))"
        case let .adaptiveAvgPool2d(h, w): return "AdaptiveAvgPool2d(\(h)x\(w))"
        case .flatten: return "Flatten"
        case let .linear(l): return "Linear(\(l.inFeatures), \(l.outFeatures))"
        case .dropout: return "Dropout"
        case .identity: return "Identity"
        case .batchNorm2d(let b): return "BatchNorm2d(\(b.weight.count))"
        }
    }

    /// Number of learned parameters.
    public var parameterCount: Int {
        switch self {
        case let .conv2d(c): return c.weight.count + (c.bias?.count ?? 0)
        case let .linear(l): return l.weight.count + (l.bias?.count ?? 0)
        case let .batchNorm2d(b): return 2 * b.weight.count
        default: return 0
        }
    }

    /// The output shape for an input shape, or an error naming the mismatch.
    public func outputShape(_ s: Shape3, index: Int) throws -> Shape3 {
        try outputShape(s, label: "layer \(index)")
    }

    /// The output shape, errors naming the layer as `label` (`layer 3`, `node 'layer2.0.conv1'`).
    func outputShape(_ s: Shape3, label: String) throws -> Shape3 {
        func window(_ n: Int, _ k: Int, _ st: Int, _ p: Int, _ axis: String) throws -> Int {
            let o = (n + 2 * p - k) / st + 1
            guard n + 2 * p >= k, o > 0 else {
                throw BiLRPError.shapeMismatch(
                    what: "\(label) (\(name)) input \(axis)", expected: "at least \(k - 2 * p)", found: "\(n)")
            }
            return o
        }
        switch self {
        case let .conv2d(c):
            guard s.channels == c.inChannels else {
                throw BiLRPError.shapeMismatch(
                    what: "\(label) (\(name)) input channels", expected: "\(c.inChannels)", found: "\(s.channels)")
            }
            return Shape3(
                c.outChannels, try window(s.height, c.spanH, c.strideH, c.padH, "height"),
                try window(s.width, c.spanW, c.strideW, c.padW, "width"))
        case .relu, .dropout, .identity:
            return s
        case let .batchNorm2d(b):
            guard s.channels == b.weight.count else {
                throw BiLRPError.shapeMismatch(
                    what: "\(label) (\(name)) input channels", expected: "\(b.weight.count)", found: "\(s.channels)")
            }
            return s
        case let .maxPool2d(p), let .avgPool2d(p):
            return Shape3(
                s.channels, try window(s.height, p.kernelH, p.strideH, p.padH, "height"),
                try window(s.width, p.kernelW, p.strideW, p.padW, "width"))
        case let .adaptiveAvgPool2d(h, w):
            return Shape3(s.channels, h, w)
        case .flatten:
            return Shape3(s.count, 1, 1)
        case let .linear(l):
            // A vector (D, 1, 1), or a sequence (D, 1, T): the layer acts on every token.
            guard s.channels == l.inFeatures, s.height == 1 else {
                throw BiLRPError.shapeMismatch(
                    what: "\(label) (\(name)) input",
                    expected: "\(l.inFeatures) features (a flattened vector or a sequence of tokens)", found: "\(s)")
            }
            return Shape3(l.outFeatures, 1, s.width)
        }
    }
}
