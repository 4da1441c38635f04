/// A dense float32 tensor in C order. Images and activations are (C, H, W), batch 1.
public struct Tensor: Sendable, Equatable {
    public var shape: [Int]
    public var data: [Float]

    /// Creates a tensor; `data.count` must equal the product of `shape`.
    public init(shape: [Int], data: [Float]) throws {
        guard let count = Tensor.count(shape), count == data.count else {
            throw BiLRPError.shapeMismatch(
                what: "tensor data", expected: Tensor.count(shape).map { "\($0) values for shape \(shape)" }
                    ?? "dims >= 0 whose product fits in an Int (shape \(shape))",
                found: "\(data.count) values")
        }
        self.shape = shape
        self.data = data
    }

    /// The number of values of a shape; nil for a negative dim or a product that overflows (a
    /// malformed file's dims must be an error, not a trap).
    public static func count(_ shape: [Int]) -> Int? {
        var n = 1
        for d in shape {
            guard d >= 0 else { return nil }
            let p = n.multipliedReportingOverflow(by: d)
            if p.overflow { return nil }
            n = p.partialValue
        }
        return n
    }

    public init(zeros shape: [Int]) {
        self.shape = shape
        self.data = [Float](repeating: 0, count: shape.reduce(1, *))
    }

    public var count: Int { data.count }
}

/// The shape of one input or activation as the engine stores it: channels, height, width.
///
/// Three kinds of values share it: an image or feature map (C, H, W); a feature vector of D values,
/// (D, 1, 1); and a sequence of T tokens with D features each, (D, 1, T): the features are the
/// channels and the tokens the positions along one row. A sequence is thus stored features-major
/// (each feature's values over the tokens contiguous), so a linear layer applied to every token is
/// a 1 x 1 convolution and runs on the convolution kernels, a mean over the tokens is a reduction
/// over the width, and patches of the factors are runs of tokens. The explainer takes a sequence as
/// the usual token-major (T, D) tensor and converts it (`Tensor.stored`).
public struct Shape3: Sendable, Hashable, CustomStringConvertible {
    public var channels: Int, height: Int, width: Int
    public init(_ channels: Int, _ height: Int, _ width: Int) {
        self.channels = channels; self.height = height; self.width = width
    }
    public var count: Int { channels * height * width }
    public var description: String { "[\(channels), \(height), \(width)]" }
}

extension Tensor {
    /// The tensor in the engine's storage: a 3-dimensional tensor is (C, H, W) as it is; a
    /// 2-dimensional one is a sequence (tokens, features), token-major as PyTorch and Hugging Face
    /// keep it, and is transposed to the features-major (D, 1, T) (see `Shape3`).
    public func stored(_ what: String = "input") throws -> (shape: Shape3, data: [Float]) {
        switch shape.count {
        case 3:
            return (Shape3(shape[0], shape[1], shape[2]), data)
        case 2:
            let (t, d) = (shape[0], shape[1])
            var out = [Float](repeating: 0, count: data.count)
            for i in 0..<t { for j in 0..<d { out[j * t + i] = data[i * d + j] } }
            return (Shape3(d, 1, t), out)
        default:
            throw BiLRPError.shapeMismatch(
                what: what, expected: "3 dimensions (C, H, W) or 2 (tokens, features)", found: "\(shape)")
        }
    }

    /// Values stored as `stored` makes them, put back in the layout of `like`: token-major
    /// (T, D) for a sequence, (C, H, W) otherwise.
    static func unstored(_ data: [Float], _ s: Shape3, like x: Tensor) throws -> Tensor {
        guard x.shape.count == 2 else { return try Tensor(shape: [s.channels, s.height, s.width], data: data) }
        let (t, d) = (s.width, s.channels)
        var out = [Float](repeating: 0, count: data.count)
        for i in 0..<t { for j in 0..<d { out[i * d + j] = data[j * t + i] } }
        return try Tensor(shape: [t, d], data: out)
    }

    /// The tensor as (C, H, W); throws when it is not 3-dimensional.
    public func shape3(_ what: String = "input") throws -> Shape3 {
        guard shape.count == 3 else {
            throw BiLRPError.shapeMismatch(what: what, expected: "3 dimensions (C, H, W)", found: "\(shape)")
        }
        return Shape3(shape[0], shape[1], shape[2])
    }
}
