/// The parameters of the graph ops that move, select and reduce values (Pad, Slice, ReduceSum /
/// ReduceMean); their rules are in `Explainer.backward`, their arithmetic in `CKernels/graphops.c`.

/// A position in a (C, H, W) tensor.
public struct Position3: Sendable, Hashable, CustomStringConvertible {
    public var channel: Int, row: Int, column: Int
    public init(_ channel: Int, _ row: Int, _ column: Int) {
        self.channel = channel; self.row = row; self.column = column
    }
    public static let zero = Position3(0, 0, 0)
    public var description: String { "(\(channel), \(row), \(column))" }
}

/// A set of the axes of a (C, H, W) tensor (bits as `CK_AXIS_*`).
public struct Axes3: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let channels = Axes3(rawValue: 1)
    public static let height = Axes3(rawValue: 2)
    public static let width = Axes3(rawValue: 4)
    public static let spatial: Axes3 = [.height, .width]

    public var description: String {
        [(Axes3.channels, "C"), (.height, "H"), (.width, "W")].filter { contains($0.0) }.map(\.1).joined(separator: ",")
    }

    /// The shape with these axes reduced to extent 1 (keepdims).
    public func reduce(_ s: Shape3) -> Shape3 {
        Shape3(contains(.channels) ? 1 : s.channels, contains(.height) ? 1 : s.height, contains(.width) ? 1 : s.width)
    }

    /// How many values each output sums.
    func count(_ s: Shape3) -> Int { s.count / reduce(s).count }
}

/// Constant padding of a (C, H, W) tensor: `before` and `after` values per axis, all >= 0.
/// Relevance that reaches a padded position has no input to go to; it leaves the explanation there,
/// as a bias's share does (with zero padding after a ReLU none reaches it: those outputs are 0).
public struct Padding3: Sendable, Equatable {
    public var before: Position3, after: Position3
    public var value: Float

    public init(before: Position3, after: Position3, value: Float = 0) throws {
        for v in [before.channel, before.row, before.column, after.channel, after.row, after.column] where v < 0 {
            throw BiLRPError.invalidArgument("padding must be >= 0 (got \(before) before, \(after) after; crop with a slice)")
        }
        self.before = before; self.after = after; self.value = value
    }

    public func outputShape(_ s: Shape3) -> Shape3 {
        Shape3(s.channels + before.channel + after.channel, s.height + before.row + after.row,
               s.width + before.column + after.column)
    }
}

/// A slice of a (C, H, W) tensor, step 1, per axis `start..<end` with Python's meaning: negative
/// indices count from the end, ends past the extent are clamped (`Int.max`: to the end). Resolved
/// per input shape, so `x[:, :, :, 2:]` keeps meaning "all but the first two columns" at any width.
public struct Slice3: Sendable, Equatable {
    public var start: Position3, end: Position3

    public init(start: Position3 = .zero, end: Position3 = Position3(.max, .max, .max)) {
        self.start = start; self.end = end
    }

    /// Where the box starts in the input and its extent; nil when it is empty on some axis.
    public func resolve(_ s: Shape3) -> (at: Position3, box: Shape3)? {
        func axis(_ a: Int, _ b: Int, _ n: Int) -> (Int, Int) {
            func clamp(_ i: Int) -> Int { min(max(i < 0 ? i + n : i, 0), n) }
            let lo = clamp(a), hi = clamp(b)
            return (lo, max(hi - lo, 0))
        }
        let (c0, c) = axis(start.channel, end.channel, s.channels)
        let (h0, h) = axis(start.row, end.row, s.height)
        let (w0, w) = axis(start.column, end.column, s.width)
        guard c > 0, h > 0, w > 0 else { return nil }
        return (Position3(c0, h0, w0), Shape3(c, h, w))
    }

    public var description: String {
        func r(_ a: Int, _ b: Int) -> String {
            (a == 0 ? "" : "\(a)") + ":" + (b >= Int.max / 2 ? "" : "\(b)")
        }
        return "[\(r(start.channel, end.channel)), \(r(start.row, end.row)), \(r(start.column, end.column))]"
    }
}
