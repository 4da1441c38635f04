/// Which rule each layer gets. A composite is an ordered list of (selector, rule); the first entry
/// whose selector matches a convolution or linear layer decides its rule, and layers no entry matches
/// get LRP-0. Max-pool is always winner-take-all, ReLU passes relevance through, and average pooling
/// is a linear layer handled with LRP-0 (or the matched epsilon). The similarity head always uses
/// LRP-0 (it is bias-free and linear, where LRP-0 is exact).
///
/// As a string (CLI, server): entries separated by `;`, each `SELECTOR:RULE`, e.g.
/// `0:zb;1-10:gamma=0.5;11-17:gamma=0.25;18-24:gamma=0.1;25-:zero`. Selectors: `N`, `N-M`
/// (inclusive), `N-` (N and above), `-M`, `first` / `last` (the first / last conv or linear layer),
/// `conv`, `linear`, `add` (residual sums: their epsilon), `max` / `min` (element-wise Max / Min
/// nodes: `proportional` splits their relevance, any other rule keeps winner-take-all), `layernorm`,
/// `gelu`, `attention` (`gradient`: their true gradient; else the conservative rules), `*`, and a
/// node-name pattern with `*` and
/// `?` wildcards (`layer4.*`, `/layer1/*`). Indices are a chain's layer indices; for a general graph
/// a node's index is its position in the graph's topological order, batch norms included (the `#`
/// column of `bilrp inspect`).
/// Rules: see `Rule.init(parsing:)`.
public struct Composite: Sendable, Equatable, CustomStringConvertible {
    public enum Selector: Sendable, Equatable {
        case range(ClosedRange<Int>)
        case first
        case conv
        case linear
        case add
        /// Element-wise Max / Min nodes.
        case maximum
        case minimum
        /// LayerNorm, GELU and attention nodes (`gradient` gives them their true gradient).
        case layerNorm
        case gelu
        case attention
        case last
        case all
        /// Node names matching a glob (`*` any run of characters, `?` one character).
        case pattern(String)
    }

    public var entries: [(selector: Selector, rule: Rule)]

    public init(_ entries: [(selector: Selector, rule: Rule)]) { self.entries = entries }

    public static func == (a: Composite, b: Composite) -> Bool {
        a.entries.count == b.entries.count
            && zip(a.entries, b.entries).allSatisfy { $0.selector == $1.selector && $0.rule == $1.rule }
    }

    /// The rule for a layer at `index` of a chain; `isFirst` marks the model's first conv/linear layer.
    public func rule(index: Int, layer: Layer, isFirst: Bool) -> Rule {
        rule(index: index, name: "\(index)", op: .layer(layer), isFirst: isFirst, isLast: false)
    }

    /// The rule for a graph node: the first entry whose selector matches it, else LRP-0.
    public func rule(index: Int, name: String, op: Graph.Op, isFirst: Bool, isLast: Bool) -> Rule {
        for (selector, rule) in entries {
            switch selector {
            case let .range(r) where r.contains(index): return rule
            case .first where isFirst: return rule
            case .last where isLast: return rule
            case .conv: if case .layer(.conv2d) = op { return rule }
            case .linear: if case .layer(.linear) = op { return rule }
            case .add: if case .add = op { return rule }
            case .maximum: if case .maximum = op { return rule }
            case .minimum: if case .minimum = op { return rule }
            case .layerNorm: if case .layerNorm = op { return rule }
            case .gelu: if case .gelu = op { return rule }
            case .attention: if case .attention = op { return rule }
            case .all: return rule
            case let .pattern(p) where Composite.glob(p, matches: name): return rule
            default: continue
            }
        }
        return .zero
    }

    /// Whether a glob (`*`, `?`) matches the whole name.
    static func glob(_ pattern: String, matches name: String) -> Bool {
        let p = Array(pattern), s = Array(name)
        var i = 0, j = 0, star = -1, mark = 0
        while j < s.count {
            if i < p.count, p[i] == "?" || p[i] == s[j] { i += 1; j += 1 }
            else if i < p.count, p[i] == "*" { star = i; mark = j; i += 1 }
            else if star >= 0 { i = star + 1; mark += 1; j = mark }
            else { return false }
        }
        while i < p.count, p[i] == "*" { i += 1 }
        return i == p.count
    }

    /// Whether some entry uses z^B (which needs input bounds).
    public var usesZBox: Bool { entries.contains { $0.rule == .zBox } }

    // MARK: Presets

    /// Named presets, each documented in the README:
    /// - `paper-vgg`: the authors' VGG-16 setup (BiLRP paper, code): z^B at layer 0, gamma = 0.5 for
    ///   layers 1-10, 0.25 for 11-17, 0.1 for 18-24, LRP-0 above.
    /// - `hp`: Hessian x Product, LRP-0 everywhere (gradient x input at the input).
    /// - `epsilon-gamma-box`: zennit's EpsilonGammaBox: z^B first, gamma = 0.25 on convolutions,
    ///   epsilon = 1e-6 on linear layers.
    /// - `epsilon-plus-flat`: zennit's EpsilonPlusFlat: flat first, z+ on convolutions, epsilon = 1e-6
    ///   on linear layers.
    /// - `tables`: the tables model (`TablesModel`): z^B on the page's ink (bounds 0 and 1), gamma =
    ///   0.25 in the detector's convolutions (`*features*`: its nodes from safetensors and from the
    ///   ONNX export), z+ on the detector head (`*head*`: its bias is minus the threshold, which
    ///   LRP-0 would turn into created relevance, 12x y on a demo pair; z+ lets it gate and
    ///   conserves), LRP-0 on the bigram gathers and the sum; min and max winner-take-all.
    public static let presets: [String: String] = [
        "paper-vgg": "0:zb;1-10:gamma=0.5;11-17:gamma=0.25;18-24:gamma=0.1;25-:zero",
        "tables": "first:zb;*head*:zplus;*features*:gamma=0.25;*:zero",
        "hp": "*:zero",
        "epsilon-gamma-box": "first:zb;conv:gamma=0.25;linear:epsilon=1e-6",
        "epsilon-plus-flat": "first:flat;conv:zplus;linear:epsilon=1e-6",
    ]

    public static var presetNames: [String] { presets.keys.sorted() }

    public static func preset(_ name: String) throws -> Composite {
        guard let spec = presets[name] else { throw BiLRPError.unknownPreset(name) }
        return try Composite(parsing: spec)
    }

    /// A preset name or a composite string.
    public static func named(_ text: String) throws -> Composite {
        if presets[text] != nil { return try preset(text) }
        guard text.contains(":") else { throw BiLRPError.unknownPreset(text) }
        return try Composite(parsing: text)
    }

    public init(parsing text: String) throws {
        var entries: [(Selector, Rule)] = []
        for raw in text.split(separator: ";", omittingEmptySubsequences: false) {
            let item = raw.trimmingCharacters(in: .whitespaces)
            if item.isEmpty {
                if text.trimmingCharacters(in: .whitespaces).isEmpty {
                    throw BiLRPError.invalidComposite("the composite is empty")
                }
                continue
            }
            let parts = item.split(separator: ":", maxSplits: 1).map(String.init)
            guard parts.count == 2 else {
                throw BiLRPError.invalidComposite("entry '\(item)' is not SELECTOR:RULE")
            }
            entries.append((try Composite.parseSelector(parts[0], entry: item), try Rule(parsing: parts[1])))
        }
        guard !entries.isEmpty else { throw BiLRPError.invalidComposite("the composite is empty") }
        self.entries = entries
    }

    static func parseSelector(_ raw: String, entry: String) throws -> Selector {
        let trimmed = raw.trimmingCharacters(in: .whitespaces)
        let s = trimmed.lowercased()
        switch s {
        case "first": return .first
        case "last": return .last
        case "conv": return .conv
        case "linear": return .linear
        case "add": return .add
        case "max": return .maximum
        case "min": return .minimum
        case "layernorm": return .layerNorm
        case "gelu": return .gelu
        case "attention": return .attention
        case "*", "all": return .all
        default: break
        }
        // Anything but digits and one dash is a node-name pattern (names keep their case).
        if s.isEmpty {
            throw BiLRPError.invalidComposite("entry '\(entry)' has an empty selector")
        }
        if s.contains(where: { !$0.isNumber && $0 != "-" }) || s.filter({ $0 == "-" }).count > 1 {
            return .pattern(trimmed)
        }
        func index(_ t: Substring) throws -> Int {
            guard let v = Int(t), v >= 0 else {
                throw BiLRPError.invalidComposite(
                    "selector '\(raw)' in '\(entry)' is not a layer index, range (N-M, N-, -M), first, conv, linear or *")
            }
            return v
        }
        if let dash = s.firstIndex(of: "-") {
            let lo = s[..<dash], hi = s[s.index(after: dash)...]
            let a = lo.isEmpty ? 0 : try index(lo)
            let b = hi.isEmpty ? Int.max : try index(hi)
            guard a <= b else { throw BiLRPError.invalidComposite("range '\(raw)' in '\(entry)' is empty") }
            return .range(a...b)
        }
        let i = try index(Substring(s))
        return .range(i...i)
    }

    public var description: String {
        entries.map { sel, rule in
            let s: String
            switch sel {
            case let .range(r) where r.lowerBound == r.upperBound: s = "\(r.lowerBound)"
            case let .range(r) where r.upperBound == Int.max: s = "\(r.lowerBound)-"
            case let .range(r): s = "\(r.lowerBound)-\(r.upperBound)"
            case .first: s = "first"
            case .conv: s = "conv"
            case .linear: s = "linear"
            case .add: s = "add"
            case .maximum: s = "max"
            case .minimum: s = "min"
            case .layerNorm: s = "layernorm"
            case .gelu: s = "gelu"
            case .attention: s = "attention"
            case .last: s = "last"
            case .all: s = "*"
            case let .pattern(p): s = p
            }
            return "\(s):\(rule)"
        }.joined(separator: ";")
    }
}

import Foundation
