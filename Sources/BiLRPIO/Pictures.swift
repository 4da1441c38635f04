import BiLRP
import Foundation

public typealias RGB = (Float, Float, Float)

/// A float RGB canvas with alpha blending, antialiased strokes and text, written as PNG.
public struct Canvas: Sendable {
    public let width: Int, height: Int
    var rgb: [Float]

    public init(width: Int, height: Int, background: RGB = (1, 1, 1)) {
        self.width = width; self.height = height
        rgb = [Float](repeating: 0, count: width * height * 3)
        for i in 0..<(width * height) { rgb[3 * i] = background.0; rgb[3 * i + 1] = background.1; rgb[3 * i + 2] = background.2 }
    }

    /// The colour at (x, y), components in [0, 1].
    public func pixel(_ x: Int, _ y: Int) -> RGB {
        let d = (y * width + x) * 3
        return (rgb[d], rgb[d + 1], rgb[d + 2])
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

    /// Fills a rectangle [x0, x1) x [y0, y1) with a colour at some opacity.
    public mutating func fill(x0: Int, y0: Int, x1: Int, y1: Int, color: RGB, alpha: Float = 1) {
        guard max(0, x0) < min(width, x1) else { return }
        for y in max(0, y0)..<min(height, y1) {
            for x in max(0, x0)..<min(width, x1) { blend(x, y, color, alpha) }
        }
    }

    /// The outline of a rectangle [x0, x1) x [y0, y1), `thickness` pixels inside it.
    public mutating func outline(x0: Int, y0: Int, x1: Int, y1: Int, color: RGB, alpha: Float = 1, thickness: Int = 1) {
        let t = max(1, min(thickness, (x1 - x0) / 2, (y1 - y0) / 2))
        fill(x0: x0, y0: y0, x1: x1, y1: y0 + t, color: color, alpha: alpha)
        fill(x0: x0, y0: y1 - t, x1: x1, y1: y1, color: color, alpha: alpha)
        fill(x0: x0, y0: y0 + t, x1: x0 + t, y1: y1 - t, color: color, alpha: alpha)
        fill(x0: x1 - t, y0: y0 + t, x1: x1, y1: y1 - t, color: color, alpha: alpha)
    }

    @inline(__always) mutating func blend(_ x: Int, _ y: Int, _ c: RGB, _ a: Float) {
        let d = (y * width + x) * 3
        rgb[d] += a * (c.0 - rgb[d]); rgb[d + 1] += a * (c.1 - rgb[d + 1]); rgb[d + 2] += a * (c.2 - rgb[d + 2])
    }

    /// Strokes a quadratic Bezier curve from p0 to p2 through control point p1, antialiased, with the
    /// given line width and opacity. Coverage is the max over the curve's segments, so a curve never
    /// darkens itself where its segments overlap.
    public mutating func strokeCurve(_ p0: (Double, Double), _ p1: (Double, Double), _ p2: (Double, Double),
                                     color: RGB, alpha: Float, lineWidth: Double) {
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

/// What the legend strip under a picture says about the explanation: where it came from.
public struct PictureCaption: Sendable, Equatable {
    /// The model file (or architecture) and where it is cut.
    public var model: String
    public var layer: String
    public var head: String
    public var rules: String
    /// "dot" or "cosine".
    public var similarity: String
    /// The two inputs' names (file names).
    public var inputs: (String, String)

    public init(model: String, layer: String, head: String, rules: String, similarity: String, inputs: (String, String)) {
        self.model = model; self.layer = layer; self.head = head; self.rules = rules
        self.similarity = similarity; self.inputs = inputs
    }

    public static func == (a: PictureCaption, b: PictureCaption) -> Bool {
        a.model == b.model && a.layer == b.layer && a.head == b.head && a.rules == b.rules
            && a.similarity == b.similarity && a.inputs == b.inputs
    }

    /// The segments of the first legend line.
    var setup: [String] {
        ["\(inputs.0) and \(inputs.1)", "model \(model), cut at \(layer)", "head \(head)", "rules \(rules)"]
    }
}

/// How the pictures look. The pair picture turns R into curve opacities as the BiLRP paper does
/// (R / (mean R^4)^(1/4), soft threshold at t1, clip at t2, divide by t2, square).
public struct PairPictureStyle: Sendable {
    public enum Background: String, Sendable, CaseIterable {
        /// The photos in light grey, so that the curves and overlays are the only colour (the paper's figures).
        case grey
        /// The photos in colour, lightened.
        case color
    }
    public var softThreshold: Float = 0.25
    public var clip: Float = 12.75
    /// Pixels per input pixel (0: the smallest integer that makes each image at least `minimumWidth` wide).
    public var scale: Int = 0
    public var minimumWidth: Int = 384
    public var gap: Int = 24
    /// The width of the strongest curves; weaker ones are thinner (down to a quarter of it).
    public var lineWidth: Double = 3.0
    /// Draw at most this many pairs (the most opaque).
    public var maxPairs: Int = 4000
    /// Outline the patches of this many top positive pairs, numbered.
    public var boxes: Int = 5
    public var background: Background = .grey
    /// What the pair picture draws a curve for.
    public enum Grouping: String, Sendable, CaseIterable {
        /// Every patch pair above the threshold (the paper's figures).
        case patches
        /// Matched regions: the pairs above the threshold grouped where both patches touch a group's
        /// patches, one curve per group between its two boxes (pages with thousands of patches).
        case regions
    }
    public var grouping: Grouping = .patches
    /// Regions drawn at most (the strongest).
    public var maxRegions: Int = 40
    /// The legend strip under the picture (needs a font).
    public var legend: Bool = true
    /// A TrueType font for the text; nil: `Typeface.standard()`.
    public var font: Typeface? = nil
    public init() {}
}

/// Where things are on a rendered pair or heatmap picture, in canvas pixels.
public struct PictureLayout: Sendable {
    /// Canvas pixels per input pixel.
    public let scale: Int
    /// Left edge of the second image.
    public let secondX: Int
    /// Height of the image row (the legend strip starts below it, after the gap).
    public let imagesHeight: Int
    /// Top of the legend strip (the canvas height when there is none).
    public let legendTop: Int

    /// The centre of a patch of the first (second) input on the canvas.
    public func center(_ r: PatchRectangle, second: Bool) -> (Double, Double) {
        (r.centerX * Double(scale) + (second ? Double(secondX) : 0), r.centerY * Double(scale))
    }
}

/// A picture before encoding: its pixels and where things are on it.
public struct RenderedPicture: Sendable {
    public var canvas: Canvas
    public var layout: PictureLayout
    public func pngData() throws -> Data { try canvas.pngData() }
}

public enum Pictures {
    public static let red: RGB = (0.80, 0.0, 0.0)
    public static let blue: RGB = (0.0, 0.25, 0.85)
    static let ink: RGB = (0.12, 0.12, 0.12)
    static let legendBackground: RGB = (1, 1, 1)

    /// The opacity-weighted pairs drawn by `pairPicture`: (index into R, signed opacity in [-1, 1]).
    public static func pairOpacities(_ R: [Float], style: PairPictureStyle) -> [(Int, Float)] {
        let norm = fourthMomentNorm(R)
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

    /// (mean R^4)^(1/4): the paper's normalization of R for display.
    static func fourthMomentNorm(_ R: [Float]) -> Float {
        let m4 = R.reduce(0.0) { $0 + pow(Double($1), 4) } / Double(max(R.count, 1))
        return Float(pow(m4, 0.25))
    }

    static func displayScale(_ style: PairPictureStyle, _ widths: [Int]) -> Int {
        style.scale > 0 ? style.scale : max(1, Int((Double(style.minimumWidth) / Double(widths.min() ?? 1)).rounded(.up)))
    }

    /// The image as the pictures show it under curves and overlays: light grey (luminance mapped
    /// into [0.45, 1], so black is mid-grey and the colour of the marks stays readable) or colour
    /// lightened the same way.
    public static func backdrop(_ img: RGBImage, _ background: PairPictureStyle.Background) -> RGBImage {
        var out = img
        let n = img.width * img.height
        for i in 0..<n {
            let r = img.pixels[3 * i], g = img.pixels[3 * i + 1], b = img.pixels[3 * i + 2]
            switch background {
            case .grey:
                let v = 0.45 + 0.55 * max(0, min(1, 0.299 * r + 0.587 * g + 0.114 * b))
                out.pixels[3 * i] = v; out.pixels[3 * i + 1] = v; out.pixels[3 * i + 2] = v
            case .color:
                out.pixels[3 * i] = 0.45 + 0.55 * r; out.pixels[3 * i + 1] = 0.45 + 0.55 * g; out.pixels[3 * i + 2] = 0.45 + 0.55 * b
            }
        }
        return out
    }

    /// The style's font, else the standard one; nil when there is none (the pictures then have no text).
    static func font(_ style: PairPictureStyle) -> Typeface? { style.font ?? (try? Typeface.standard()) }

    static func measure(_ font: Typeface?, _ text: String, size: Int) -> Int { font?.width(text, size: size) ?? 0 }

    /// The text size (pixels per em) of the pictures' labels on a canvas of this width.
    public static func textSize(canvasWidth: Int) -> Int { max(12, min(18, canvasWidth / 58)) }

    // MARK: The pair picture

    /// Both inputs side by side (grey by default), a curve between the centres of every patch pair
    /// whose opacity is above zero, width and opacity growing with |R|: red where R > 0 (the pair
    /// makes the inputs similar), blue where R < 0; the strongest drawn last. The patches of the top
    /// pairs are outlined and numbered, and a legend strip names the setup and the colours.
    public static func pairPicture(_ e: PairExplanation, _ first: RGBImage, _ second: RGBImage,
                                   style: PairPictureStyle = PairPictureStyle(), caption: PictureCaption? = nil) throws -> Data {
        try pairCanvas(e, first, second, style: style, caption: caption).pngData()
    }

    public static func pairCanvas(_ e: PairExplanation, _ first: RGBImage, _ second: RGBImage,
                                  style: PairPictureStyle = PairPictureStyle(), caption: PictureCaption? = nil) throws -> RenderedPicture {
        if style.grouping == .regions { return try regionCanvas(e, first, second, style: style, caption: caption) }
        var pairs = pairOpacities(e.relevance, style: style)
        // Strongest drawn last, on top; by |R|, so that pairs clipped to the same opacity keep their order.
        pairs.sort { abs(e.relevance[$0.0]) < abs(e.relevance[$1.0]) }
        let total = pairs.count
        if pairs.count > style.maxPairs { pairs = Array(pairs.suffix(style.maxPairs)) }
        let top = e.topPositive(style.boxes)
        let key = String(format: "%d of %d pairs drawn (t1 = %g, t2 = %g)", pairs.count, total, Double(style.softThreshold), Double(style.clip))
            + (top.isEmpty ? "" : ", boxes: the top \(top.count)")
        var (canvas, layout, legend, font) = pairFrame(e, first, second, style: style, caption: caption,
                                                       keys: ("R > 0: the pair makes the inputs similar", key))
        let (s, secondX) = (layout.scale, layout.secondX)

        let q = e.columns
        for (i, o) in pairs {
            let p0 = layout.center(e.first.grid.rectangle(i / q), second: false)
            let p2 = layout.center(e.second.grid.rectangle(i % q), second: true)
            // Bend upwards by a tenth of the distance, so curves between the same rows stay apart.
            let mid = ((p0.0 + p2.0) / 2, (p0.1 + p2.1) / 2 - 0.1 * hypot(p2.0 - p0.0, p2.1 - p0.1))
            let strength = min(1, abs(o))
            canvas.strokeCurve(p0, mid, p2, color: o > 0 ? red : blue, alpha: strength,
                               lineWidth: style.lineWidth * Double(0.25 + 0.75 * strength.squareRoot()))
        }
        // The top pairs' patches, outlined and numbered (the number at the box's top-left corner).
        for (rank, pair) in top.enumerated().reversed() {
            for (r, second) in [(pair.first, false), (pair.second, true)] {
                let x0 = r.x0 * s + (second ? secondX : 0), y0 = r.y0 * s
                let x1 = r.x1 * s + (second ? secondX : 0), y1 = r.y1 * s
                canvas.outline(x0: x0, y0: y0, x1: x1, y1: y1, color: (0.55, 0, 0), thickness: max(2, s / 2 + 1))
                numberLabel(&canvas, rank + 1, x: x0, y: y0, font: font)
            }
        }
        if !legend.isEmpty { drawLegend(&canvas, legend, top: layout.legendTop, font: font) }
        return RenderedPicture(canvas: canvas, layout: layout)
    }

    /// The pair pictures' frame: both inputs side by side over their backdrops, room for the
    /// legend (the caption, y and conservation, the grids, then the colour keys: `keys.0` for red,
    /// `keys.1` after them) and where things are.
    static func pairFrame(_ e: PairExplanation, _ first: RGBImage, _ second: RGBImage, style: PairPictureStyle,
                          caption: PictureCaption?, keys: (String, String))
        -> (canvas: Canvas, layout: PictureLayout, legend: [LegendLine], font: Typeface?) {
        let s = displayScale(style, [first.width, second.width])
        let secondX = first.width * s + style.gap
        let imagesHeight = max(first.height, second.height) * s
        let width = secondX + second.width * s
        var legend: [LegendLine] = []
        let font = Self.font(style)
        if style.legend, font != nil {
            let c = e.conservation
            if let caption { legend.append(.text(caption.setup)) }
            legend.append(.text([
                String(format: "y = %.4g", e.similarity) + (caption.map { " (\($0.similarity))" } ?? ""),
                String(format: "sum of R = %.4g (relative error %.2g)", c.relevanceSum, c.relativeError),
                "patches \(e.first.grid.rows) x \(e.first.grid.columns) and \(e.second.grid.rows) x \(e.second.grid.columns) of \(e.first.grid.patch) px",
            ]))
            legend.append(.keys([(red, keys.0), (blue, "R < 0: dissimilar")], keys.1))
        }
        let legendHeight = legend.isEmpty ? 0 : legendStripHeight(legend, width: width, font: font)
        let legendTop = legendHeight > 0 ? imagesHeight + style.gap / 2 : imagesHeight
        var canvas = Canvas(width: width, height: legendTop + legendHeight)
        canvas.draw(backdrop(first, style.background).resized(width: first.width * s, height: first.height * s), x: 0, y: 0, scale: 1)
        canvas.draw(backdrop(second, style.background).resized(width: second.width * s, height: second.height * s), x: secondX, y: 0, scale: 1)
        return (canvas, PictureLayout(scale: s, secondX: secondX, imagesHeight: imagesHeight, legendTop: legendTop), legend, font)
    }

    /// A rank number in white on dark red above a box's top-left corner (inside it where the box
    /// touches the top); nothing without a font.
    static func numberLabel(_ canvas: inout Canvas, _ number: Int, x: Int, y: Int, font: Typeface?) {
        var placed: [(Int, Int, Int, Int)] = []
        numberLabel(&canvas, number, x: x, y: y, font: font, avoiding: &placed)
    }

    /// Where a label (x0, y0, x1, y1) goes: moved right, past each placed label it would overlap,
    /// until it overlaps none.
    public static func labelSlot(_ r: (Int, Int, Int, Int), avoiding placed: [(Int, Int, Int, Int)]) -> (Int, Int, Int, Int) {
        var r = r
        while let o = placed.first(where: { r.0 < $0.2 && $0.0 < r.2 && r.1 < $0.3 && $0.1 < r.3 }) {
            r = (o.2 + 1, r.1, o.2 + 1 + (r.2 - r.0), r.3)
        }
        return r
    }

    /// A number label that moves right past the labels already placed that it would cover (two
    /// matched regions can share a box corner), and joins them.
    static func numberLabel(_ canvas: inout Canvas, _ number: Int, x: Int, y: Int, font: Typeface?,
                            avoiding placed: inout [(Int, Int, Int, Int)]) {
        guard font != nil else { return }
        let size = max(10, textSize(canvasWidth: canvas.width) - 3), label = "\(number)"
        let w = measure(font, label, size: size) + 4, ly = y - size - 2 >= 0 ? y - size - 2 : y
        let slot = labelSlot((x, ly, x + w, ly + size + 2), avoiding: placed)
        placed.append(slot)
        let x0 = slot.0
        canvas.fill(x0: x0, y0: ly, x1: x0 + w, y1: ly + size + 2, color: (0.55, 0, 0), alpha: 0.9)
        canvas.text(label, x: x0 + 2, baseline: ly + size - 2, size: size, color: (1, 1, 1), font: font)
    }

    // MARK: Matched regions

    /// A group of patch pairs: a box of patches on each input and the sum of their R.
    public struct RegionPair: Sendable, Equatable {
        /// Patch rows and columns, inclusive: (row0, column0, row1, column1).
        public var first: (Int, Int, Int, Int), second: (Int, Int, Int, Int)
        public var relevance: Double
        public var pairs: Int
        public static func == (a: RegionPair, b: RegionPair) -> Bool {
            a.first == b.first && a.second == b.second && a.relevance == b.relevance && a.pairs == b.pairs
        }
    }

    /// The pairs whose opacity is above zero (`pairOpacities`), strongest first, grouped: a pair
    /// joins the first group of its sign (groups in the order they were opened, so the strongest
    /// first) whose box on each input it touches (within one patch, diagonals included), growing
    /// the boxes, else it opens a group; then groups whose boxes touch on both inputs merge, until
    /// none do. The `maxRegions` groups of largest |R| summed, strongest first, and the share of
    /// the R > 0 above the threshold that the positive ones hold.
    public static func matchedRegions(_ R: [Float], first: PatchGrid, second: PatchGrid,
                                      style: PairPictureStyle) -> (regions: [RegionPair], positiveShare: Double) {
        typealias Box = (Int, Int, Int, Int)
        let q = second.count
        var pairs = pairOpacities(R, style: style)
        pairs.sort { abs(R[$0.0]) != abs(R[$1.0]) ? abs(R[$0.0]) > abs(R[$1.0]) : $0.0 < $1.0 }
        func touches(_ a: Box, _ b: Box) -> Bool {
            a.0 <= b.2 + 1 && b.0 <= a.2 + 1 && a.1 <= b.3 + 1 && b.1 <= a.3 + 1
        }
        func union(_ a: Box, _ b: Box) -> Box { (min(a.0, b.0), min(a.1, b.1), max(a.2, b.2), max(a.3, b.3)) }
        var groups: [RegionPair] = []
        var positive = 0.0
        for (i, _) in pairs {
            let v = Double(R[i])
            let (p1, p2) = (i / q, i % q)
            let a = (p1 / first.columns, p1 % first.columns, p1 / first.columns, p1 % first.columns)
            let b = (p2 / second.columns, p2 % second.columns, p2 / second.columns, p2 % second.columns)
            if v > 0 { positive += v }
            if let g = groups.firstIndex(where: { ($0.relevance > 0) == (v > 0) && touches($0.first, a) && touches($0.second, b) }) {
                groups[g].first = union(groups[g].first, a); groups[g].second = union(groups[g].second, b)
                groups[g].relevance += v; groups[g].pairs += 1
            } else {
                groups.append(RegionPair(first: a, second: b, relevance: v, pairs: 1))
            }
        }
        // Grown boxes can come to touch: merge such groups until none do.
        var merged = true
        while merged {
            merged = false
            outer: for i in groups.indices {
                for j in (i + 1)..<groups.count
                where (groups[i].relevance > 0) == (groups[j].relevance > 0)
                    && touches(groups[i].first, groups[j].first) && touches(groups[i].second, groups[j].second) {
                    groups[i].first = union(groups[i].first, groups[j].first)
                    groups[i].second = union(groups[i].second, groups[j].second)
                    groups[i].relevance += groups[j].relevance; groups[i].pairs += groups[j].pairs
                    groups.remove(at: j)
                    merged = true
                    break outer
                }
            }
        }
        groups.sort { abs($0.relevance) > abs($1.relevance) }
        let drawn = Array(groups.prefix(style.maxRegions))
        let held = drawn.filter { $0.relevance > 0 }.reduce(0.0) { $0 + $1.relevance }
        return (drawn, positive > 0 ? held / positive : 0)
    }

    /// The pair picture by matched regions: both inputs side by side, each group's two boxes
    /// outlined and joined by one curve whose width and opacity grow with the group's |R| (red
    /// R > 0, blue R < 0); the five strongest positive groups numbered.
    static func regionCanvas(_ e: PairExplanation, _ first: RGBImage, _ second: RGBImage,
                             style: PairPictureStyle, caption: PictureCaption?) throws -> RenderedPicture {
        let (regions, share) = matchedRegions(e.relevance, first: e.first.grid, second: e.second.grid, style: style)
        let key = String(format: "the %d strongest matched regions (pairs above t1 = %g grouped where both patches touch; %.0f%% of their R > 0), numbered: the top 5",
                         regions.count, Double(style.softThreshold), 100 * share)
        var (canvas, layout, legend, font) = pairFrame(e, first, second, style: style, caption: caption,
                                                       keys: ("R > 0: the regions make the inputs similar", key))
        let (s, secondX) = (layout.scale, layout.secondX)
        let strongest = regions.map { abs($0.relevance) }.max() ?? 1
        let patch = e.first.grid.patch
        func rect(_ b: (Int, Int, Int, Int), _ grid: PatchGrid, second: Bool) -> (Int, Int, Int, Int) {
            let ox = second ? secondX : 0
            return (b.1 * patch * s + ox, b.0 * patch * s, min((b.3 + 1) * patch, grid.width) * s + ox, min((b.2 + 1) * patch, grid.height) * s)
        }
        // Weakest first, so the strongest are on top.
        for g in regions.reversed() {
            let strength = Float((abs(g.relevance) / strongest).squareRoot())
            let color = g.relevance > 0 ? red : blue
            let a = rect(g.first, e.first.grid, second: false), b = rect(g.second, e.second.grid, second: true)
            let p0 = (Double(a.0 + a.2) / 2, Double(a.1 + a.3) / 2), p2 = (Double(b.0 + b.2) / 2, Double(b.1 + b.3) / 2)
            let mid = ((p0.0 + p2.0) / 2, (p0.1 + p2.1) / 2 - 0.1 * hypot(p2.0 - p0.0, p2.1 - p0.1))
            for r in [a, b] {
                canvas.outline(x0: r.0, y0: r.1, x1: r.2, y1: r.3, color: color, alpha: 0.35 + 0.65 * strength, thickness: max(1, s / 2 + 1))
            }
            canvas.strokeCurve(p0, mid, p2, color: color, alpha: 0.25 + 0.75 * strength,
                               lineWidth: style.lineWidth * Double(0.35 + 0.65 * strength))
        }
        var placed: [(Int, Int, Int, Int)] = []
        for (rank, g) in regions.filter({ $0.relevance > 0 }).prefix(5).enumerated() {
            for r in [rect(g.first, e.first.grid, second: false), rect(g.second, e.second.grid, second: true)] {
                numberLabel(&canvas, rank + 1, x: r.0, y: r.1, font: font, avoiding: &placed)
            }
        }
        if !legend.isEmpty { drawLegend(&canvas, legend, top: layout.legendTop, font: font) }
        return RenderedPicture(canvas: canvas, layout: layout)
    }

    // MARK: Heatmaps

    /// How the heatmap picture shows the marginals.
    public enum HeatmapLayout: String, Sendable, CaseIterable {
        /// A translucent diverging overlay on each image, with a colour bar.
        case overlay
        /// The images on top and the per-patch values as coloured squares below them.
        case squares
    }

    /// The two marginals of R (row sums over the first input's patches, column sums over the
    /// second's: each the first-order explanation of y with the other input held fixed), in one
    /// symmetric scale: red positive, blue negative.
    public static func heatmapPicture(_ e: PairExplanation, _ first: RGBImage, _ second: RGBImage,
                                      style: PairPictureStyle = PairPictureStyle(), layout: HeatmapLayout = .overlay,
                                      caption: PictureCaption? = nil) throws -> Data {
        let items = [(first, e.first.grid, e.firstMarginal), (second, e.second.grid, e.secondMarginal)]
        switch layout {
        case .squares: return try heatmaps(items, style: style)
        case .overlay:
            let note = "first-order relevance of y: row sums of R over \(caption?.inputs.0 ?? "the first input"), column sums over \(caption?.inputs.1 ?? "the second")"
            return try overlayCanvas(items, style: style, caption: caption, note: note).pngData()
        }
    }

    /// The colour of value t in [-1, 1] over a backdrop colour: red (t > 0) or blue (t < 0) at
    /// opacity 0.85 |t|. Symmetric: t and -t are the same strength of their colours.
    public static func overlayColor(_ t: Float, over base: RGB) -> RGB {
        let a = 0.85 * min(1, abs(t)), c = t >= 0 ? red : blue
        return (base.0 + a * (c.0 - base.0), base.1 + a * (c.1 - base.1), base.2 + a * (c.2 - base.2))
    }

    /// Images with their per-patch values as a translucent overlay (one symmetric scale over all
    /// of them), a colour bar at the right, and a legend strip.
    public static func overlayCanvas(_ items: [(RGBImage, PatchGrid, [Float])], style: PairPictureStyle = PairPictureStyle(),
                                     caption: PictureCaption? = nil, note: String) throws -> RenderedPicture {
        let s = displayScale(style, items.map(\.0.width))
        let maxAbs = items.flatMap(\.2).map(abs).max() ?? 0
        let imagesHeight = items.map(\.0.height).max()! * s
        let font = Self.font(style)
        let size = textSize(canvasWidth: items.reduce(0) { $0 + $1.0.width * s })
        let labels = [String(format: "%+.3g", maxAbs), "0", String(format: "%+.3g", -maxAbs)]
        let barWidth = 18, barX = items.reduce(0) { $0 + $1.0.width * s + style.gap }
        let width = barX + barWidth + 8 + labels.map { measure(font, $0, size: size) }.max()! + 4
        var legend: [LegendLine] = []
        if let caption { legend.append(.text(caption.setup)) }
        legend.append(.text([note, "one scale for both: red > 0, blue < 0, strongest at the bar's ends"]))
        let legendHeight = style.legend && font != nil ? legendStripHeight(legend, width: width, font: font) : 0
        let legendTop = legendHeight > 0 ? imagesHeight + style.gap / 2 : imagesHeight
        var canvas = Canvas(width: width, height: legendTop + legendHeight)
        var x = 0, secondX = 0
        for (k, (img, grid, values)) in items.enumerated() {
            if k == 1 { secondX = x }
            canvas.draw(backdrop(img, style.background).resized(width: img.width * s, height: img.height * s), x: x, y: 0, scale: 1)
            for p in 0..<grid.count {
                let r = grid.rectangle(p), t = maxAbs > 0 ? values[p] / maxAbs : 0
                guard t != 0 else { continue }
                for py in (r.y0 * s)..<(r.y1 * s) {
                    for px in (x + r.x0 * s)..<(x + r.x1 * s) {
                        let d = (py * canvas.width + px) * 3
                        let c = overlayColor(t, over: (canvas.rgb[d], canvas.rgb[d + 1], canvas.rgb[d + 2]))
                        canvas.rgb[d] = c.0; canvas.rgb[d + 1] = c.1; canvas.rgb[d + 2] = c.2
                    }
                }
            }
            x += img.width * s + style.gap
        }
        // Over the backdrop's mid grey, as the overlay is.
        drawColorBar(&canvas, x: barX, width: barWidth, top: size, bottom: imagesHeight - size, labels: labels, size: size,
                     font: font) { overlayColor($0, over: (0.725, 0.725, 0.725)) }
        if legendHeight > 0 { drawLegend(&canvas, legend, top: legendTop, font: font) }
        return RenderedPicture(canvas: canvas, layout: PictureLayout(scale: s, secondX: secondX, imagesHeight: imagesHeight, legendTop: legendTop))
    }

    /// Diverging colour map: blue (-1), white (0), red (+1).
    public static func diverging(_ v: Float) -> RGB {
        let t = max(-1, min(1, v))
        return t >= 0 ? (1, 1 - t, 1 - t) : (1 + t, 1 + t, 1)
    }

    /// Images on top and per-patch (or per-pixel, patch 1) heatmaps under them, one shared symmetric scale.
    public static func heatmaps(_ items: [(RGBImage, PatchGrid, [Float])], style: PairPictureStyle = PairPictureStyle()) throws -> Data {
        let s = displayScale(style, items.map(\.0.width))
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

    // MARK: The pair matrix

    /// R as a P x Q diverging heatmap (rows: the first input's patches in row-major order, columns:
    /// the second's), with lines where a new row of patches begins, the patch rows' pixel y along
    /// both axes, and a colour bar. The colour scale is the pair picture's: R / (mean R^4)^(1/4)
    /// clipped at t2, so the two pictures saturate at the same pairs.
    public static func matrixPicture(_ e: PairExplanation, style: PairPictureStyle = PairPictureStyle(),
                                     caption: PictureCaption? = nil) throws -> Data {
        try matrixCanvas(e, style: style, caption: caption).pngData()
    }

    /// The matrix picture before encoding; its layout's `scale` is the cell size in pixels,
    /// `secondX` the matrix's left edge and `imagesHeight` its bottom.
    public static func matrixCanvas(_ e: PairExplanation, style: PairPictureStyle = PairPictureStyle(),
                                    caption: PictureCaption? = nil) throws -> RenderedPicture {
        let P = e.rows, Q = e.columns
        let cell = style.scale > 0 ? style.scale : max(1, min(24, 640 / max(P, Q)))
        let font = Self.font(style)
        let size = textSize(canvasWidth: max(640, Q * cell))
        let maxAbs = e.relevance.map(abs).max() ?? 0
        let scaleValue = min(maxAbs, fourthMomentNorm(e.relevance) * style.clip)
        let clipped = maxAbs > scaleValue
        let rowLabel = { (grid: PatchGrid, r: Int) in "y \(r * grid.patch)" }
        let left = measure(font, rowLabel(e.first.grid, e.first.grid.rows - 1), size: size) + 10
        let top = 2 * (size + 6)
        let labels = [(clipped ? "≥ " : "") + String(format: "%+.3g", scaleValue), "0",
                      (clipped ? "≤ " : "") + String(format: "%+.3g", -scaleValue)]
        let barX = left + Q * cell + style.gap, barWidth = 18
        let width = barX + barWidth + 8 + labels.map { measure(font, $0, size: size) }.max()! + 4
        var legend: [LegendLine] = []
        if let caption { legend.append(.text(caption.setup)) }
        legend.append(.text([
            "R[p, q]: rows p are patches of \(caption?.inputs.0 ?? "the first input"), columns q of \(caption?.inputs.1 ?? "the second"), row-major",
            "lines: a new row of patches", String(format: "y = %.4g, sum of R = %.4g", e.similarity, e.conservation.relevanceSum),
        ]))
        let matrixBottom = top + P * cell
        let legendHeight = style.legend && font != nil ? legendStripHeight(legend, width: width, font: font) : 0
        let legendTop = matrixBottom + style.gap / 2
        var canvas = Canvas(width: width, height: legendTop + legendHeight)
        for p in 0..<P {
            for q in 0..<Q {
                let v = scaleValue > 0 ? e.relevance[p * Q + q] / scaleValue : 0
                canvas.fill(x0: left + q * cell, y0: top + p * cell, x1: left + (q + 1) * cell, y1: top + (p + 1) * cell, color: diverging(v))
            }
        }
        // Patch-row boundaries and labels: every row where they fit (at least a line of text apart).
        let grey: RGB = (0.6, 0.6, 0.6)
        func every(_ grid: PatchGrid) -> Int { max(1, Int((Double(size + 4) / Double(grid.columns * cell)).rounded(.up))) }
        let g1 = e.first.grid, g2 = e.second.grid
        for r in stride(from: 0, to: g1.rows, by: every(g1)) {
            let y = top + r * g1.columns * cell
            if r > 0 { canvas.fill(x0: left, y0: y, x1: left + Q * cell, y1: y + 1, color: grey, alpha: 0.7) }
            canvas.text(rowLabel(g1, r), x: left - 5, baseline: y + size, size: size - 2, color: ink, anchor: 1, font: font)
        }
        for r in stride(from: 0, to: g2.rows, by: every(g2)) {
            let x = left + r * g2.columns * cell
            if r > 0 { canvas.fill(x0: x, y0: top, x1: x + 1, y1: matrixBottom, color: grey, alpha: 0.7) }
            canvas.text(rowLabel(g2, r), x: x + 2, baseline: top - 4, size: size - 2, color: ink, font: font)
        }
        canvas.text("columns: patches of \(caption?.inputs.1 ?? "the second input") (y of their row)", x: left, baseline: size + 2,
                    size: size, color: ink, font: font)
        canvas.outline(x0: left - 1, y0: top - 1, x1: left + Q * cell + 1, y1: matrixBottom + 1, color: ink)
        drawColorBar(&canvas, x: barX, width: barWidth, top: top, bottom: matrixBottom, labels: labels, size: size,
                     font: font, color: diverging)
        if legendHeight > 0 { drawLegend(&canvas, legend, top: legendTop, font: font) }
        return RenderedPicture(canvas: canvas, layout: PictureLayout(scale: cell, secondX: left, imagesHeight: matrixBottom, legendTop: legendTop))
    }

    /// A vertical colour bar over rows top ..< bottom: color(+1) at the top, color(0) in the middle,
    /// color(-1) at the bottom, outlined, with the three labels (top, middle, bottom) at its right.
    static func drawColorBar(_ canvas: inout Canvas, x: Int, width: Int, top: Int, bottom: Int, labels: [String], size: Int,
                             font: Typeface?, color: (Float) -> RGB) {
        for y in top..<bottom {
            let t = 1 - 2 * Float(y - top) / Float(max(1, bottom - top - 1))
            canvas.fill(x0: x, y0: y, x1: x + width, y1: y + 1, color: color(t))
        }
        canvas.outline(x0: x, y0: top, x1: x + width, y1: bottom, color: ink)
        for (label, y) in zip(labels, [top, (top + bottom) / 2, bottom]) {
            canvas.fill(x0: x + width, y0: y, x1: x + width + 5, y1: y + 1, color: ink)
            canvas.text(label, x: x + width + 8, baseline: y + size / 3, size: size, color: ink, font: font)
        }
    }

    // MARK: Legend strips

    enum LegendLine {
        /// Segments joined by " · ", wrapped onto more lines where they do not fit.
        case text([String])
        /// Colour keys (a short stroke and its meaning), then a note.
        case keys([(RGB, String)], String)
    }

    static let separator = "  ·  "

    /// The lines of text a legend line becomes at this width.
    static func wrapped(_ segments: [String], width: Int, size: Int, font: Typeface?) -> [String] {
        var lines: [String] = [], current = ""
        for s in segments {
            let candidate = current.isEmpty ? s : current + separator + s
            if current.isEmpty || measure(font, candidate, size: size) <= width { current = candidate } else {
                lines.append(current); current = s
            }
        }
        if !current.isEmpty { lines.append(current) }
        return lines
    }

    static func legendRows(_ legend: [LegendLine], width: Int, size: Int, font: Typeface?) -> [LegendLine] {
        legend.flatMap { line -> [LegendLine] in
            switch line {
            case let .text(segments): return wrapped(segments, width: width - 16, size: size, font: font).map { .text([$0]) }
            case let .keys(keys, note):
                let keysWidth = keys.reduce(0) { $0 + 34 + measure(font, $1.1, size: size) + 18 }
                if keysWidth + measure(font, note, size: size) <= width - 16 { return [line] }
                return [.keys(keys, ""), .text([note])]
            }
        }
    }

    static func legendStripHeight(_ legend: [LegendLine], width: Int, font: Typeface?) -> Int {
        let size = textSize(canvasWidth: width)
        return legendRows(legend, width: width, size: size, font: font).count * (size + size / 2) + size
    }

    static func drawLegend(_ canvas: inout Canvas, _ legend: [LegendLine], top: Int, font: Typeface?) {
        let size = textSize(canvasWidth: canvas.width), step = size + size / 2
        canvas.fill(x0: 0, y0: top, x1: canvas.width, y1: canvas.height, color: legendBackground)
        canvas.fill(x0: 0, y0: top, x1: canvas.width, y1: top + 1, color: (0.8, 0.8, 0.8))
        var baseline = top + size / 2 + size
        for row in legendRows(legend, width: canvas.width, size: size, font: font) {
            var x = 8
            switch row {
            case let .text(segments):
                canvas.text(segments.joined(separator: separator), x: x, baseline: baseline, size: size, color: ink, font: font)
            case let .keys(keys, note):
                for (color, meaning) in keys {
                    let y = Double(baseline - size / 3)
                    canvas.strokeCurve((Double(x), y), (Double(x) + 13, y), (Double(x) + 26, y), color: color, alpha: 1, lineWidth: 3)
                    x += 34
                    x += canvas.text(meaning, x: x, baseline: baseline, size: size, color: ink, font: font) + 18
                }
                canvas.text(note, x: x, baseline: baseline, size: size, color: ink, font: font)
            }
            baseline += step
        }
    }
}
