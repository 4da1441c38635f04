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

/// The shape of one input or activation: channels, height, width.
public struct Shape3: Sendable, Hashable, CustomStringConvertible {
    public var channels: Int, height: Int, width: Int
    public init(_ channels: Int, _ height: Int, _ width: Int) {
        self.channels = channels; self.height = height; self.width = width
    }
    public var count: Int { channels * height * width }
    public var description: String { "[\(channels), \(height), \(width)]" }
}

extension Tensor {
    /// The tensor as (C, H, W); throws when it is not 3-dimensional.
    public func shape3(_ what: String = "input") throws -> Shape3 {
        guard shape.count == 3 else {
            throw BiLRPError.shapeMismatch(what: what, expected: "3 dimensions (C, H, W)", found: "\(shape)")
        }
        return Shape3(shape[0], shape[1], shape[2])
    }
}
