import BiLRP
import Foundation

/// A float RGB canvas with alpha blending and antialiased strokes, written as PNG.
public struct Canvas: Sendable {
    public let width: Int, height: Int
    var rgb: [Float]

    public init(width: Int, height: Int, background: (Float, Float, Float) = (1, 1, 1)) {
        self.width = width; self.height = height
        rgb = [Float](repeating: 0, count: width * height * 3)
        for i in 0..<(width * height) { rgb[3 * i] = background.0; rgb[3 * i + 1] = background.1; rgb[3 * i + 2] = background.2 }
    }

    /// Draws an image scaled by an integer factor (nearest neighbour) with its top-left corner at (x, y).
    public mutating func draw(_ img: RGBImage, x: Int, y: Int, scale: Int) {
        for py in 0..<(img.height * scale) {
            let cy = y + py
            if cy < 0 || cy >= height { continue }
            for px in 0..<(img.width * scale) {
                let cx = x + px
                if cx < 0 || cx >= width { continue }
                let s = ((py / scale) * img.width + px / scale) * 3, d = (cy * width + cx) * 3
                rgb[d] = img.pixels[s]; rgb[d + 1] = img.pixels[s + 1]; rgb[d + 2] = img.pixels[s + 2]
            }
        }
    }

    /// Fills a rectangle with a colour at some opacity.
    public mutating func fill(x0: Int, y0: Int, x1: Int, y1: Int, color: (Float, Float, Float), alpha: Float = 1) {
        for y in max(0, y0)..<min(height, y1) {
            for x in max(0, x0)..<min(width, x1) { blend(x, y, color, alpha) }
        }
    }

    @inline(__always) mutating func blend(_ x: Int, _ y: Int, _ c: (Float, Float, Float), _ a: Float) {
        let d = (y * width + x) * 3
        rgb[d] += a * (c.0 - rgb[d]); rgb[d + 1] += a * (c.1 - rgb[d + 1]); rgb[d + 2] += a * (c.2 - rgb[d + 2])
    }

    /// Strokes a quadratic Bezier curve from p0 to p2 through control point p1, antialiased, with the
    /// given line width and opacity. Coverage is the max over the curve's segments, so a curve never
    /// darkens itself where its segments overlap.
    public mutating func strokeCurve(_ p0: (Double, Double), _ p1: (Double, Double), _ p2: (Double, Double),
                                     color: (Float, Float, Float), alpha: Float, lineWidth: Double) {
        let length = hypot(p1.0 - p0.0, p1.1 - p0.1) + hypot(p2.0 - p1.0, p2.1 - p1.1)
        let steps = max(2, Int(length / 3))
        var pts: [(Double, Double)] = []
        for i in 0...steps {
            let t = Double(i) / Double(steps), u = 1 - t
            pts.append((u * u * p0.0 + 2 * u * t * p1.0 + t * t * p2.0, u * u * p0.1 + 2 * u * t * p1.1 + t * t * p2.1))
        }
        let r = lineWidth / 2
        let xs = pts.map(\.0), ys = pts.map(\.1)
        let bx0 = max(0, Int(xs.min()! - r - 1)), bx1 = min(width, Int(xs.max()! + r + 2))
        let by0 = max(0, Int(ys.min()! - r - 1)), by1 = min(height, Int(ys.max()! + r + 2))
        guard bx0 < bx1, by0 < by1 else { return }
        let bw = bx1 - bx0
        var coverage = [Float](repeating: 0, count: bw * (by1 - by0))
        for s in 0..<(pts.count - 1) {
            let (ax, ay) = pts[s], (cx, cy) = pts[s + 1]
            let dx = cx - ax, dy = cy - ay, len2 = max(dx * dx + dy * dy, 1e-12)
            let x0 = max(bx0, Int(min(ax, cx) - r - 1)), x1 = min(bx1, Int(max(ax, cx) + r + 2))
            let y0 = max(by0, Int(min(ay, cy) - r - 1)), y1 = min(by1, Int(max(ay, cy) + r + 2))
            if x0 >= x1 || y0 >= y1 { continue }
            for y in y0..<y1 {
                for x in x0..<x1 {
                    let px = Double(x) + 0.5, py = Double(y) + 0.5
                    let t = max(0, min(1, ((px - ax) * dx + (py - ay) * dy) / len2))
                    let d = hypot(px - (ax + t * dx), py - (ay + t * dy))
                    let c = Float(max(0, min(1, r + 0.5 - d)))
                    let i = (y - by0) * bw + (x - bx0)
                    if c > coverage[i] { coverage[i] = c }
                }
            }
        }
        for y in by0..<by1 {
            for x in bx0..<bx1 {
                let c = coverage[(y - by0) * bw + (x - bx0)]
                if c > 0 { blend(x, y, color, alpha * c) }
            }
        }
    }

    public func pngData() throws -> Data {
        let bytes = rgb.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) }
        return try PNGEncoder.encode(rgb: bytes, width: width, height: height, channels: 3)
    }
}

/// How the pair picture turns R into curve opacities (BiLRP paper, section 7 of the method notes):
/// R / (mean R^4)^(1/4), soft threshold at t1, clip at t2, divide by t2, square.
public struct PairPictureStyle: Sendable {
    public var softThreshold: Float = 0.25
    public var clip: Float = 12.75
    /// Pixels per input pixel (0: choose so that each image is at least 384 pixels wide).
    public var scale: Int = 0
    public var gap: Int = 24
    public var lineWidth: Double = 2.0
    /// Draw at most this many pairs (the most opaque), for speed on large patch grids.
    public var maxCurves: Int = 4000
    public init() {}
}

public enum Pictures {
    static let red: (Float, Float, Float) = (0.84, 0.0, 0.0)
    static let blue: (Float, Float, Float) = (0.0, 0.2, 0.86)

    /// The opacity-weighted pairs drawn by `pairPicture`: (row patch, column patch, signed opacity).
    public static func pairOpacities(_ R: [Float], style: PairPictureStyle) -> [(Int, Float)] {
        let m4 = R.reduce(0.0) { $0 + pow(Double($1), 4) } / Double(max(R.count, 1))
        let norm = Float(pow(m4, 0.25))
        guard norm > 0 else { return [] }
        var out: [(Int, Float)] = []
        for (i, r) in R.enumerated() {
            var v = r / norm
            v -= max(-style.softThreshold, min(style.softThreshold, v))
            v = max(-style.clip, min(style.clip, v)) / style.clip
            if v != 0 { out.append((i, v < 0 ? -v * v : v * v)) }
        }
        return out
    }

    static func displayScale(_ style: PairPictureStyle, _ a: RGBImage, _ b: RGBImage) -> Int {
        style.scale > 0 ? style.scale : max(1, Int((384.0 / Double(min(a.width, b.width))).rounded(.up)))
    }

    /// Both inputs side by side, a curve between the centres of every patch pair with opacity > 0:
    /// red where R > 0 (the pair makes the inputs similar), blue where R < 0.
    public static func pairPicture(_ e: PairExplanation, _ first: RGBImage, _ second: RGBImage,
                                   style: PairPictureStyle = PairPictureStyle()) throws -> Data {
        let s = displayScale(style, first, second)
        let offset = first.width * s + style.gap
        var canvas = Canvas(width: offset + second.width * s, height: max(first.height, second.height) * s)
        canvas.draw(first.resized(width: first.width * s, height: first.height * s), x: 0, y: 0, scale: 1)
        canvas.draw(second.resized(width: second.width * s, height: second.height * s), x: offset, y: 0, scale: 1)
        var pairs = pairOpacities(e.relevance, style: style)
        pairs.sort { abs($0.1) < abs($1.1) }  // strongest drawn last, on top
        if pairs.count > style.maxCurves { pairs = Array(pairs.suffix(style.maxCurves)) }
        let q = e.columns
        for (i, o) in pairs {
            let a = e.first.grid.rectangle(i / q), b = e.second.grid.rectangle(i % q)
            let p0 = (a.centerX * Double(s), a.centerY * Double(s))
            let p2 = (b.centerX * Double(s) + Double(offset), b.centerY * Double(s))
            // Bend upwards by a tenth of the distance, so curves between the same rows stay apart.
            let mid = ((p0.0 + p2.0) / 2, (p0.1 + p2.1) / 2 - 0.1 * hypot(p2.0 - p0.0, p2.1 - p0.1))
            let strength = min(1, abs(o))
            canvas.strokeCurve(p0, mid, p2, color: o > 0 ? red : blue, alpha: strength,
                               lineWidth: style.lineWidth * Double(0.4 + 0.6 * strength))
            if strength > 0.5 {
                // Mark both ends of the strong pairs, so the matched parts are visible under the curves.
                for p in [p0, p2] { canvas.strokeCurve(p, p, p, color: o > 0 ? red : blue, alpha: strength, lineWidth: 3 * style.lineWidth) }
            }
        }
        return try canvas.pngData()
    }

    /// Diverging colour map: blue (-1), white (0), red (+1).
    public static func diverging(_ v: Float) -> (Float, Float, Float) {
        let t = max(-1, min(1, v))
        return t >= 0 ? (1, 1 - t, 1 - t) : (1 + t, 1 + t, 1)
    }

    /// The two inputs on top, their marginal relevance (row and column sums of R, per patch) below,
    /// in one symmetric diverging scale: white is zero, red positive, blue negative.
    public static func heatmapPicture(_ e: PairExplanation, _ first: RGBImage, _ second: RGBImage,
                                      style: PairPictureStyle = PairPictureStyle()) throws -> Data {
        try heatmaps([(first, e.first.grid, e.firstMarginal), (second, e.second.grid, e.secondMarginal)], style: style)
    }

    /// Images on top and per-patch (or per-pixel, patch 1) heatmaps under them, one shared symmetric scale.
    public static func heatmaps(_ items: [(RGBImage, PatchGrid, [Float])], style: PairPictureStyle = PairPictureStyle()) throws -> Data {
        let s = style.scale > 0 ? style.scale : max(1, Int((384.0 / Double(items.map(\.0.width).min()!)).rounded(.up)))
        let maxAbs = items.flatMap(\.2).map(abs).max() ?? 0
        let cellH = items.map(\.0.height).max()! * s
        var x = 0
        var canvas = Canvas(width: items.reduce(0) { $0 + $1.0.width * s } + style.gap * (items.count - 1),
                            height: 2 * cellH + style.gap)
        for (img, grid, values) in items {
            canvas.draw(img.resized(width: img.width * s, height: img.height * s), x: x, y: 0, scale: 1)
            for p in 0..<grid.count {
                let r = grid.rectangle(p)
                let v = maxAbs > 0 ? values[p] / maxAbs : 0
                canvas.fill(x0: x + r.x0 * s, y0: cellH + style.gap + r.y0 * s, x1: x + r.x1 * s,
                            y1: cellH + style.gap + r.y1 * s, color: diverging(v))
            }
            x += img.width * s + style.gap
        }
        return try canvas.pngData()
    }
}
