/// Every error the library throws. Each message names the thing that is wrong.
public enum BiLRPError: Error, Sendable, Equatable, CustomStringConvertible {
    case shapeMismatch(what: String, expected: String, found: String)
    case missingTensor(String)
    case invalidLayerIndex(Int, count: Int)
    case invalidComposite(String)
    case unknownPreset(String)
    case unsupported(String)
    /// A model graph that cannot run: a cycle, a value no node writes, a name used twice.
    case invalidGraph(String)
    case invalidArgument(String)
    case io(String)
    /// A request over a `ResourceLimits` bound (h, or the estimated memory).
    case limitExceeded(String)
    /// The caller's `Cancellation` was set while the explanation ran.
    case cancelled
    /// A kernel could not allocate its working memory (the explanation stopped; nothing aborted).
    case outOfMemory(String)

    public var description: String {
        switch self {
        case let .shapeMismatch(what, expected, found):
            return "shape mismatch for \(what): expected \(expected), found \(found)"
        case let .missingTensor(name):
            return "missing tensor '\(name)' in the weights"
        case let .invalidLayerIndex(index, count):
            return "layer index \(index) is out of range: the model has layers 0..<\(count), so L must be in 1...\(count)"
        case let .invalidComposite(message):
            return "invalid rule composite: \(message)"
        case let .unknownPreset(name):
            return "unknown rule preset '\(name)' (known: \(Composite.presetNames.joined(separator: ", ")))"
        case let .unsupported(message):
            return "unsupported: \(message)"
        case let .invalidGraph(message):
            return "invalid model graph: \(message)"
        case let .invalidArgument(message):
            return message
        case let .io(message):
            return message
        case let .limitExceeded(message):
            return message
        case .cancelled:
            return "the explanation was cancelled"
        case let .outOfMemory(message):
            return "out of memory: \(message)"
        }
    }
}
