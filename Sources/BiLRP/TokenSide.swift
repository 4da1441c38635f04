import Foundation

// MARK: - Sequences from the token side
//
// The factors are A^T = Q B_1 ... B_L R_L (P x h), as for images (PatchSide.swift): Q sums a
// patch's (token run's) relevance over the features, B_l is node l's LRP backward, linear in the
// relevance. The backward brackets from the right, h relevance maps through every node. For a
// sentence, P (tokens) is far below h (384 for MiniLM), and every node of a transformer has a
// cheap transposed step, so the whole product is bracketed from the left: P functionals, one per
// token run, go up through the transposed steps in forward order,
//     linear        u <- sum_passes scale / stab(z) * sum_terms W_t (a_t * u)
//     add           u <- sum_k a_k * u_k / stab(z)
//     LayerNorm     u <- gamma * (w - mean_c w) / (sigma stab(y)),  w = x * u
//     attention     u <- A (v * u_v) / stab(o)                       (queries and keys: nothing)
//     mean / sum    u <- reduce(a * u) / stab(z)
//     ReLU, GELU, flatten, Mul(k): u unchanged
// and meet the output: A[p, m] = phi_m U[p, m]. A value read by several nodes hands each the same
// functional (the transpose of the backward's sum). Results equal the backward's up to rounding;
// the cost is P forward passes instead of h backward ones.

extension Explainer {
    /// Whether every node of the plan has a transposed step above (a sequence model of linear
    /// layers, attention, LayerNorm, GELU, residual adds and pooling over tokens).
    func tokenSideEligible(_ plan: ExecutionPlan) -> Bool {
        plan.nodes.allSatisfy { n in
            switch n.op {
            case let .conv(c): return c.isLinear
            case let .layerNorm(_, _, exact), let .gelu(_, exact), let .attention(_, _, exact): return !exact
            case .relu, .flatten, .scale, .add, .reduce: return true
            default: return false
            }
        }
    }

    /// Whether the factors of this input run from the token side: a sequence, every node
    /// eligible, fewer patches than outputs, not switched off (`BILRP_PATCH_SIDE=off`).
    func useTokenSide(_ trace: Trace, patches: Int, outputs h: Int) -> Bool {
        sequenceInput == true && kernels.patchSideLayers != 0 && patches < h && tokenSideEligible(trace.plan)
    }

    /// A (P x h, row-major) from the token side.
    func tokenSideFactors(_ trace: Trace, _ grid: PatchGrid, cancellation: Cancellation?) throws -> [Float] {
        let plan = trace.plan
        let P = grid.count
        var remaining = plan.readers
        var u = [Buffer?](repeating: nil, count: plan.valueCount)
        // The input's functionals: 1 on every feature of the patch's tokens.
        let s0 = plan.shapes[0]
        let u0 = Buffer(count: P * s0.count)
        u0.pointer.initialize(repeating: 0, count: P * s0.count)
        for p in 0..<P {
            let r = grid.rectangle(p)
            for c in 0..<s0.channels { for t in r.x0..<r.x1 { u0.pointer[p * s0.count + c * s0.width + t] = 1 } }
        }
        u[0] = u0
        // Nodes whose functionals reach the output: the queries' and keys' branches do not (the
        // AH rule gives them no relevance), so their linear layers are skipped.
        var carries = [Bool](repeating: false, count: plan.valueCount)
        carries[plan.output] = true
        for node in plan.nodes.reversed() where carries[node.output] {
            if case .attention = node.op { carries[node.inputs[2]] = true } else { for v in node.inputs { carries[v] = true } }
        }
        // Every functional and temporary comes from one pool: the same sizes come back at every layer.
        let pool = BufferPool()
        func release(_ v: Int) {
            guard let b = u[v] else { return }
            u[v] = nil
            if !u.contains(where: { $0 === b }) { pool.give(b) }  // ReLU, GELU, ... pass theirs on
        }
        for (l, node) in plan.nodes.enumerated() {
            try cancellation?.check()
            defer {
                for v in node.inputs {
                    remaining[v] -= 1
                    if remaining[v] == 0 { release(v) }
                }
            }
            guard carries[node.output] else { continue }
            let s = trace.shapes[l], out = plan.shapes[node.output]
            let a = trace.inputs[l]
            // The first input's functional (nil for an attention, whose query is not carried).
            let uIn = u[node.inputs[0]]
            let y: Buffer
            switch node.op {
            case let .conv(c):
                y = pool.take(P * out.count)
                let w = pool.take(P * s.count), sum = pool.take(P * out.count), tmp = pool.take(P * out.count)
                for (k, pass) in c.passes.enumerated() {
                    for (i, term) in pass.terms.enumerated() {
                        var source = uIn!.const
                        if term.input != .ones {
                            let input = term.input == .identity ? a : trace.modifiedInputs[l][term.input]!
                            kernels.lrpProduct(n: P, count: s.count, input.const, uIn!.const, scale: 1, w.pointer, accumulate: false)
                            source = w.const
                        }
                        // The first term writes the sum, the others add to it.
                        try batchedLinear(c, term.weight, source, s, out, P, i == 0 ? sum.pointer : tmp.pointer, pool)
                        if i > 0 {
                            kernels.lrpProduct(n: 1, count: P * out.count, nil, tmp.const, scale: 1, sum.pointer, accumulate: true)
                        }
                    }
                    let single = k == 0 && pass.scale == 1
                    kernels.lrpDivide(n: P, count: out.count, sum.const, trace.denominators[l][k].const, epsilon: pass.epsilon,
                                      single ? y.pointer : tmp.pointer)
                    if !single {
                        kernels.lrpProduct(n: 1, count: P * out.count, nil, tmp.const, scale: pass.scale, y.pointer,
                                           accumulate: k > 0)
                    }
                }
                for b in [w, sum, tmp] { pool.give(b) }
            case .relu, .flatten, .scale, .gelu:
                y = uIn!
            case let .add(eps):
                let sum = pool.take(P * out.count)
                for (i, v) in node.inputs.enumerated() {
                    kernels.lrpProduct(n: P, count: s.count, trace.values[v]!.const, u[v]!.const, scale: 1, sum.pointer,
                                       accumulate: i > 0)
                }
                y = pool.take(P * out.count)
                kernels.lrpDivide(n: P, count: out.count, sum.const, trace.denominators[l][0].const, epsilon: eps, y.pointer)
                pool.give(sum)
            case let .layerNorm(ln, eps, _):
                let w = pool.take(P * s.count)
                kernels.lrpProduct(n: P, count: s.count, a.const, uIn!.const, scale: 1, w.pointer, accumulate: false)
                kernels.layerNormTransposed(n: P, w.pointer, s, gamma: ln.gamma, inverseSigma: trace.denominators[l][1].const)
                y = pool.take(P * out.count)
                kernels.lrpDivide(n: P, count: out.count, w.const, trace.denominators[l][0].const, epsilon: eps, y.pointer)
                pool.give(w)
            case let .attention(heads, eps, _):
                let v = node.inputs[2]
                let w = pool.take(P * s.count), o = pool.take(P * s.count)
                kernels.lrpProduct(n: P, count: s.count, trace.values[v]!.const, u[v]!.const, scale: 1, w.pointer,
                                   accumulate: false)
                try TransformerOps.attentionMix(n: P, w.const, s, heads: heads, weights: trace.denominators[l][1].const, o.pointer,
                                                kernels)
                y = pool.take(P * out.count)
                kernels.lrpDivide(n: P, count: out.count, o.const, trace.denominators[l][0].const, epsilon: eps, y.pointer)
                pool.give(w); pool.give(o)
            case let .reduce(axes, mean, eps):
                let w = pool.take(P * s.count), r = pool.take(P * out.count)
                kernels.lrpProduct(n: P, count: s.count, a.const, uIn!.const, scale: 1, w.pointer, accumulate: false)
                for p in 0..<P {
                    kernels.reduceForward(w.const + p * s.count, s, axes: axes, scale: mean ? 1 / Float(axes.count(s)) : 1,
                                          r.pointer + p * out.count)
                }
                y = pool.take(P * out.count)
                kernels.lrpDivide(n: P, count: out.count, r.const, trace.denominators[l][0].const, epsilon: eps, y.pointer)
                pool.give(w); pool.give(r)
            default:
                preconditionFailure("tokenSideEligible admits no other op")
            }
            u[node.output] = y
        }
        let h = trace.output.count
        let U = u[plan.output]!
        var A = [Float](repeating: 0, count: P * h)
        for p in 0..<P { for m in 0..<h { A[p * h + m] = U.pointer[p * h + m] * trace.output.pointer[m] } }
        return A
    }

    /// The linear layer (no bias) on all P functionals in one call: the functionals, stored
    /// [p][feature][token], are laid side by side as one sequence of P x T tokens ([feature][p, token]),
    /// so the GEMM is (out x in) by (in x P T) instead of P thin ones.
    private func batchedLinear(_ c: PreparedConv, _ m: WeightModifier, _ w: UnsafePointer<Float>, _ s: Shape3, _ out: Shape3,
                               _ P: Int, _ y: UnsafeMutablePointer<Float>, _ pool: BufferPool) throws {
        let t = s.width
        if P == 1 { return try c.forward(w, c.geometry(s), m, bias: nil, y, kernels) }
        let wide = pool.take(P * s.count), result = pool.take(P * out.count)
        defer { pool.give(wide); pool.give(result) }
        for p in 0..<P {
            for f in 0..<s.channels { (wide.pointer + (f * P + p) * t).update(from: w + p * s.count + f * t, count: t) }
        }
        try c.forward(wide.const, c.geometry(Shape3(s.channels, 1, P * t)), m, bias: nil, result.pointer, kernels)
        for p in 0..<P {
            for f in 0..<out.channels { (y + p * out.count + f * t).update(from: result.const + (f * P + p) * t, count: t) }
        }
    }
}
