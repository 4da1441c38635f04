/// Which rule each layer gets. A composite is an ordered list of (selector, rule); the first entry
/// whose selector matches a convolution or linear layer decides its rule, and layers no entry matches
/// get LRP-0. Max-pool is always winner-take-all, ReLU passes relevance through, and average pooling
/// is a linear layer handled with LRP-0 (or the matched epsilon). The similarity head always uses
/// LRP-0 (it is bias-free and linear, where LRP-0 is exact).
///
/// As a string (CLI, server): entries separated by `;`, each `SELECTOR:RULE`, e.g.
/// `0:zb;1-10:gamma=0.5;11-17:gamma=0.25;18-24:gamma=0.1;25-:zero`. Selectors: `N`, `N-M`
/// (inclusive), `N-` (N and above), `-M`, `first` (the first conv/linear layer), `conv`, `linear`,
/// `*`. Rules: see `Rule.init(parsing:)`.
public struct Composite: Sendable, Equatable, CustomStringConvertible {
    public enum Selector: Sendable, Equatable {
        case range(ClosedRange<Int>)
        case first
        case conv
        case linear
        case all
    }

    public var entries: [(selector: Selector, rule: Rule)]

    public init(_ entries: [(selector: Selector, rule: Rule)]) { self.entries = entries }

    public static func == (a: Composite, b: Composite) -> Bool {
        a.entries.count == b.entries.count
            && zip(a.entries, b.entries).allSatisfy { $0.selector == $1.selector && $0.rule == $1.rule }
    }

    /// The rule for a layer at `index`; `isFirst` marks the model's first conv/linear layer.
    public func rule(index: Int, layer: Layer, isFirst: Bool) -> Rule {
        for (selector, rule) in entries {
            switch selector {
            case let .range(r) where r.contains(index): return rule
            case .first where isFirst: return rule
            case .conv: if case .conv2d = layer { return rule }
            case .linear: if case .linear = layer { return rule }
            case .all: return rule
            default: continue
            }
        }
        return .zero
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
    public static let presets: [String: String] = [
        "paper-vgg": "0:zb;1-10:gamma=0.5;11-17:gamma=0.25;18-24:gamma=0.1;25-:zero",
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
        let s = raw.trimmingCharacters(in: .whitespaces).lowercased()
        switch s {
        case "first": return .first
        case "conv": return .conv
        case "linear": return .linear
        case "*", "all": return .all
        default: break
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
            case .all: s = "*"
            }
            return "\(s):\(rule)"
        }.joined(separator: ";")
    }
}

import Foundation
