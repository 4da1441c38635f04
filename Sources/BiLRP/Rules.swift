/// How a rule modifies a layer's weights (rho in the literature).
public enum WeightModifier: Hashable, Sendable {
    case identity
    /// w + gamma max(w, 0)
    case gamma(Float)
    /// max(w, 0)
    case positive
    /// min(w, 0)
    case negative
    /// -max(w, 0), the z^B term of the lower bound
    case negatedPositive
    /// -min(w, 0), the z^B term of the upper bound
    case negatedNegative
    /// w^2
    case square
    /// 1
    case one

    public func apply(_ w: Float) -> Float {
        switch self {
        case .identity: return w
        case let .gamma(g): return w + g * max(w, 0)
        case .positive: return max(w, 0)
        case .negative: return min(w, 0)
        case .negatedPositive: return -max(w, 0)
        case .negatedNegative: return -min(w, 0)
        case .square: return w * w
        case .one: return 1
        }
    }
}

/// What a rule feeds into the modified layer in place of its input a.
public enum InputModifier: Hashable, Sendable {
    case identity
    case positive
    case negative
    /// 1 everywhere (w^2 and flat rules)
    case ones
    /// the per-channel lower bound l of the input domain (z^B)
    case lowerBound
    /// the per-channel upper bound h of the input domain (z^B)
    case upperBound
}

/// One product term of a rule: the layer applied to a modified input with modified weights.
public struct RuleTerm: Hashable, Sendable {
    public var input: InputModifier
    public var weight: WeightModifier
}

/// One normalized redistribution: z = sum_t layer(input_t, weight_t) + bias; s = R / stab(z);
/// R_in += scale * sum_t input_t * layer^T(s, weight_t).
public struct RulePass: Hashable, Sendable {
    public var terms: [RuleTerm]
    /// Applied to the bias; nil drops the bias from the denominator.
    public var bias: WeightModifier?
    public var epsilon: Float
    public var scale: Float
}

/// An LRP rule, as data: one generic engine applies every rule (as in zennit). All rules are linear
/// in the relevance, so one rule serves a whole block of maps with shared denominators.
public enum Rule: Hashable, Sendable, CustomStringConvertible {
    /// Default stabilizer of every rule but LRP-epsilon.
    public static let defaultEpsilon: Float = 1e-9

    /// LRP-0: rho(w) = w (gradient x input on ReLU networks).
    case zero
    /// LRP-epsilon with a user-chosen epsilon.
    case epsilon(Float)
    /// LRP-gamma: rho(w) = w + gamma w+, biases modified the same way.
    case gamma(Float)
    /// z+ (alpha1-beta0): rho(w) = w+, rho(b) = b+.
    case zPlus
    /// alpha-beta with alpha - beta = 1.
    case alphaBeta(alpha: Float, beta: Float)
    /// z^B for the first layer, inputs bounded by the preprocessing's l <= x <= h.
    case zBox
    /// w^2: rho(w) = w^2, inputs replaced by 1.
    case wSquare
    /// flat: rho(w) = 1, inputs replaced by 1.
    case flat
    /// For element-wise Min / Max nodes: relevance split in proportion to the inputs,
    /// a_k / stab(sum_j a_j), instead of winner-take-all. Not a rule for weighted layers.
    case proportional
    /// For LayerNorm, GELU and attention nodes: the true gradient (their full Jacobian, with the
    /// standard deviation, gelu'(z) and the softmax's dependence on queries and keys), so that with
    /// LRP-0 elsewhere the factors are gradient x input and BiLRP is the Hessian x Product. Not a
    /// rule for weighted layers.
    case gradient

    /// The rule as passes of terms, for inputs of unknown sign or (when `nonNegativeInput`) for
    /// inputs known to be >= 0 (after a ReLU), where the negative-input terms vanish.
    public func passes(nonNegativeInput: Bool) -> [RulePass] {
        let e = Rule.defaultEpsilon
        func single(_ w: WeightModifier, bias: WeightModifier?, eps: Float = e) -> [RulePass] {
            [RulePass(terms: [RuleTerm(input: .identity, weight: w)], bias: bias, epsilon: eps, scale: 1)]
        }
        // Positive (or negative) contributions: x+ w+ + x- w- (or x+ w- + x- w+).
        func signed(_ positive: Bool, scale: Float) -> RulePass {
            let (a, b): (WeightModifier, WeightModifier) = positive ? (.positive, .negative) : (.negative, .positive)
            let terms = nonNegativeInput
                ? [RuleTerm(input: .identity, weight: a)]
                : [RuleTerm(input: .positive, weight: a), RuleTerm(input: .negative, weight: b)]
            return RulePass(terms: terms, bias: positive ? .positive : .negative, epsilon: e, scale: scale)
        }
        switch self {
        case .zero: return single(.identity, bias: .identity)
        case let .epsilon(eps): return single(.identity, bias: .identity, eps: eps)
        case let .gamma(g): return single(.gamma(g), bias: .gamma(g))
        case .zPlus: return [signed(true, scale: 1)]
        case let .alphaBeta(alpha, beta):
            return beta == 0 ? [signed(true, scale: alpha)] : [signed(true, scale: alpha), signed(false, scale: -beta)]
        case .zBox:
            // z = x w - l w+ - h w-; the biases cancel: b - b+ - b- = 0 (as in the authors' code).
            return [RulePass(
                terms: [
                    RuleTerm(input: .identity, weight: .identity),
                    RuleTerm(input: .lowerBound, weight: .negatedPositive),
                    RuleTerm(input: .upperBound, weight: .negatedNegative),
                ], bias: nil, epsilon: e, scale: 1)]
        case .wSquare:
            return [RulePass(terms: [RuleTerm(input: .ones, weight: .square)], bias: nil, epsilon: e, scale: 1)]
        case .flat:
            return [RulePass(terms: [RuleTerm(input: .ones, weight: .one)], bias: nil, epsilon: e, scale: 1)]
        case .proportional, .gradient:
            // Refused on weighted layers by the explainer (`Rule.appliesToWeightedLayers`).
            return single(.identity, bias: .identity)
        }
    }

    /// The stabilizer of the ops without weights the rule is matched to: average pooling (linear
    /// layers with positive constant weights, where gamma and z+ reduce to LRP-0), residual sums
    /// and standalone batch norms. The matched epsilon, else the default.
    var parameterFreeEpsilon: Float {
        if case let .epsilon(e) = self { return e }
        return Rule.defaultEpsilon
    }

    /// Whether a convolution or linear layer can take this rule (`proportional` is for Min / Max).
    var appliesToWeightedLayers: Bool { self != .proportional && self != .gradient }

    /// The spelling used in composite strings.
    public var description: String {
        switch self {
        case .zero: return "zero"
        case let .epsilon(e): return "epsilon=\(e)"
        case let .gamma(g): return "gamma=\(g)"
        case .zPlus: return "zplus"
        case let .alphaBeta(a, b): return "alphabeta=\(a),\(b)"
        case .zBox: return "zb"
        case .wSquare: return "wsquare"
        case .flat: return "flat"
        case .proportional: return "proportional"
        case .gradient: return "gradient"
        }
    }

    /// Parses `zero`, `epsilon=E` (or `eps=E`), `gamma=G`, `zplus`, `alphabeta=A,B`, `zb`, `wsquare`, `flat`,
    /// `proportional`, `gradient`.
    public init(parsing text: String) throws {
        let t = text.trimmingCharacters(in: .whitespaces).lowercased()
        let parts = t.split(separator: "=", maxSplits: 1).map(String.init)
        let name = parts.first ?? ""
        let arg = parts.count == 2 ? parts[1] : nil
        func number(_ s: String?) throws -> Float {
            guard let s, let v = Float(s), v.isFinite else {
                throw BiLRPError.invalidComposite("rule '\(text)' needs a number after '='")
            }
            return v
        }
        func noArgument() throws {
            if arg != nil { throw BiLRPError.invalidComposite("rule '\(name)' takes no argument (got '\(text)')") }
        }
        switch name {
        case "zero", "lrp0", "0": try noArgument(); self = .zero
        case "epsilon", "eps":
            let e = try number(arg)
            guard e >= 0 else { throw BiLRPError.invalidComposite("epsilon must be >= 0 (got '\(text)')") }
            self = .epsilon(e)
        case "gamma":
            let g = try number(arg)
            guard g >= 0 else { throw BiLRPError.invalidComposite("gamma must be >= 0 (got '\(text)')") }
            self = g == 0 ? .zero : .gamma(g)
        case "zplus", "z+": try noArgument(); self = .zPlus
        case "alphabeta", "ab":
            let ab = (arg ?? "").split(separator: ",").map(String.init)
            guard ab.count == 2 else { throw BiLRPError.invalidComposite("rule '\(text)': expected alphabeta=ALPHA,BETA") }
            let (a, b) = (try number(ab[0]), try number(ab[1]))
            guard abs(a - b - 1) < 1e-6, b >= 0 else {
                throw BiLRPError.invalidComposite("rule '\(text)': alpha - beta must be 1 and beta >= 0")
            }
            self = .alphaBeta(alpha: a, beta: b)
        case "zb", "zbox": try noArgument(); self = .zBox
        case "wsquare", "w2": try noArgument(); self = .wSquare
        case "flat": try noArgument(); self = .flat
        case "proportional": try noArgument(); self = .proportional
        case "gradient": try noArgument(); self = .gradient
        default:
            throw BiLRPError.invalidComposite(
                "unknown rule '\(text)' (known: zero, epsilon=E, gamma=G, zplus, alphabeta=A,B, zb, wsquare, flat, proportional, gradient)")
        }
    }
}

import Foundation
