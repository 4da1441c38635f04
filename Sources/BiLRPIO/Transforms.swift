import BiLRP
import Foundation

/// A known change of an image, so that a pair (x, transformed x) has a known correspondence.
public enum SyntheticTransform: Sendable, Equatable, CustomStringConvertible {
    /// Moved by (dx, dy) pixels; the uncovered border is the image's mean colour.
    case shift(dx: Int, dy: Int)
    /// Zoomed by s about the centre (bilinear); outside the source, the mean colour.
    case scale(Double)
    /// The rectangle [x, x + w) x [y, y + h) resized to the whole image.
    case crop(x: Int, y: Int, width: Int, height: Int)
    /// Mirrored left to right.
    case hflip

    static let syntax = "shift:DX,DY, scale:S, crop:X,Y,W,H or hflip"

    public init(parsing text: String) throws {
        let parts = text.split(separator: ":", maxSplits: 1).map { String($0).trimmingCharacters(in: .whitespaces) }
        let name = parts.first?.lowercased() ?? ""
        let numbers = parts.count > 1 ? parts[1].split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces)
        } : []
        func bad(_ why: String) -> BiLRPError { .invalidArgument("transform '\(text)': \(why) (expected \(SyntheticTransform.syntax))") }
        func ints(_ n: Int) throws -> [Int] {
            let v = numbers.compactMap { Int($0) }
            guard numbers.count == n, v.count == n else {
                throw bad("\(name) takes \(n) integer\(n == 1 ? "" : "s")")
            }
            return v
        }
        switch name {
        case "shift":
            let v = try ints(2)
            self = .shift(dx: v[0], dy: v[1])
        case "scale":
            guard numbers.count == 1, let s = Double(numbers[0]), s.isFinite, s >= 0.25, s <= 4 else {
                throw bad("scale takes one factor from 0.25 to 4")
            }
            self = .scale(s)
        case "crop":
            let v = try ints(4)
            guard v[0] >= 0, v[1] >= 0, v[2] >= 1, v[3] >= 1 else { throw bad("the crop needs X, Y >= 0 and W, H >= 1") }
            self = .crop(x: v[0], y: v[1], width: v[2], height: v[3])
        case "hflip":
            guard parts.count == 1 else { throw bad("hflip takes no numbers") }
            self = .hflip
        default:
            throw BiLRPError.invalidArgument("unknown transform '\(text)' (expected \(SyntheticTransform.syntax))")
        }
    }

    public var description: String {
        switch self {
        case let .shift(dx, dy): return "shift:\(dx),\(dy)"
        case let .scale(s): return "scale:\(s)"
        case let .crop(x, y, w, h): return "crop:\(x),\(y),\(w),\(h)"
        case .hflip: return "hflip"
        }
    }

    /// The transformed image, the same size, and where each pixel of `img` went.
    public func apply(_ img: RGBImage) throws -> (image: RGBImage, correspondence: Correspondence) {
        let W = img.width, H = img.height
        var mean: RGB = (0, 0, 0)
        for i in 0..<(W * H) { mean.0 += img.pixels[3 * i]; mean.1 += img.pixels[3 * i + 1]; mean.2 += img.pixels[3 * i + 2] }
        let n = Float(W * H)
        mean = (mean.0 / n, mean.1 / n, mean.2 / n)
        var out = [Float](repeating: 0, count: W * H * 3)
        var targets = [Float](repeating: .nan, count: 2 * W * H)
        func put(_ x: Int, _ y: Int, _ c: RGB) {
            let d = 3 * (y * W + x)
            out[d] = c.0; out[d + 1] = c.1; out[d + 2] = c.2
        }
        func pixel(_ x: Int, _ y: Int) -> RGB { (img[x, y, 0], img[x, y, 1], img[x, y, 2]) }
        /// Where each source pixel centre goes, given a forward map of centres.
        func forward(_ f: (Double, Double) -> (Double, Double)?) {
            for y in 0..<H {
                for x in 0..<W {
                    guard let t = f(Double(x) + 0.5, Double(y) + 0.5) else { continue }
                    guard t.0 >= 0, t.0 < Double(W), t.1 >= 0, t.1 < Double(H) else { continue }
                    targets[2 * (y * W + x)] = Float(t.0); targets[2 * (y * W + x) + 1] = Float(t.1)
                }
            }
        }
        switch self {
        case let .shift(dx, dy):
            for y in 0..<H {
                for x in 0..<W {
                    let sx = x - dx, sy = y - dy
                    put(x, y, sx >= 0 && sx < W && sy >= 0 && sy < H ? pixel(sx, sy) : mean)
                }
            }
            forward { ($0 + Double(dx), $1 + Double(dy)) }
        case let .scale(s):
            let cx = Double(W) / 2, cy = Double(H) / 2
            for y in 0..<H {
                for x in 0..<W {
                    // The source position of this pixel's centre, in index coordinates (centres at integers).
                    let sx = cx + (Double(x) + 0.5 - cx) / s - 0.5, sy = cy + (Double(y) + 0.5 - cy) / s - 0.5
                    put(x, y, sx < -0.5 || sx > Double(W) - 0.5 || sy < -0.5 || sy > Double(H) - 0.5 ? mean : bilinear(img, sx, sy))
                }
            }
            forward { (cx + s * ($0 - cx), cy + s * ($1 - cy)) }
        case let .crop(x0, y0, w, h):
            guard x0 + w <= W, y0 + h <= H else {
                throw BiLRPError.invalidArgument("transform '\(self)': the crop leaves the \(W) x \(H) image")
            }
            var part = [Float](repeating: 0, count: w * h * 3)
            for y in 0..<h { for x in 0..<w { for c in 0..<3 { part[3 * (y * w + x) + c] = img[x0 + x, y0 + y, c] } } }
            out = try RGBImage(width: w, height: h, pixels: part).resized(width: W, height: H).pixels
            let sx = Double(W) / Double(w), sy = Double(H) / Double(h)
            forward { x, y in
                x >= Double(x0) && x < Double(x0 + w) && y >= Double(y0) && y < Double(y0 + h)
                    ? ((x - Double(x0)) * sx, (y - Double(y0)) * sy) : nil
            }
        case .hflip:
            for y in 0..<H { for x in 0..<W { put(x, y, pixel(W - 1 - x, y)) } }
            forward { (Double(W) - $0, $1) }
        }
        var image = try RGBImage(width: W, height: H, pixels: out)
        image.format = img.format
        return (image, try Correspondence(width: W, height: H, targets: targets, dense: true))
    }

    /// Bilinear sample at index coordinates (pixel centres at integers), edges clamped.
    func bilinear(_ img: RGBImage, _ x: Double, _ y: Double) -> RGB {
        let xc = min(max(x, 0), Double(img.width - 1)), yc = min(max(y, 0), Double(img.height - 1))
        let x0 = Int(xc), y0 = Int(yc), x1 = min(x0 + 1, img.width - 1), y1 = min(y0 + 1, img.height - 1)
        let fx = Float(xc - Double(x0)), fy = Float(yc - Double(y0))
        func at(_ c: Int) -> Float {
            let top = img[x0, y0, c] * (1 - fx) + img[x1, y0, c] * fx
            let bottom = img[x0, y1, c] * (1 - fx) + img[x1, y1, c] * fx
            return top * (1 - fy) + bottom * fy
        }
        return (at(0), at(1), at(2))
    }
}

extension Correspondence {
    /// Reads a correspondence file for a first input of `width` x `height` model pixels: an NPY of
    /// offsets (H, W, 2) (dx, dy per pixel, NaN unknown), or a CSV of point matches `x,y,x2,y2`
    /// (a header line is skipped).
    public static func read(path: String, width: Int, height: Int) throws -> Correspondence {
        guard FileManager.default.fileExists(atPath: path) else { throw BiLRPError.io("no such file: '\(path)'") }
        if path.lowercased().hasSuffix(".npy") {
            let t = try NPY.read(path: path)
            guard t.shape.count == 3, t.shape[2] == 2 else {
                throw BiLRPError.shapeMismatch(what: "correspondence '\(path)'", expected: "offsets (H, W, 2)", found: "\(t.shape)")
            }
            guard t.shape[0] == height, t.shape[1] == width else {
                throw BiLRPError.shapeMismatch(what: "correspondence '\(path)'",
                                               expected: "(\(height), \(width), 2), the first input's size as the model sees it",
                                               found: "\(t.shape)")
            }
            return try Correspondence(offsets: t)
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw BiLRPError.io(FileManager.default.fileExists(atPath: path) ? "cannot read '\(path)'" : "no such file: '\(path)'")
        }
        var points: [(Double, Double, Double, Double)] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let v = line.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
            if v.count == 4, v.allSatisfy({ $0 != nil && $0!.isFinite }) {
                points.append((v[0]!, v[1]!, v[2]!, v[3]!))
            } else if !(i == 0 && v.allSatisfy({ $0 == nil })) {
                throw BiLRPError.invalidArgument("correspondence '\(path)' line \(i + 1): expected four numbers x,y,x2,y2, found '\(line)'")
            }
        }
        guard !points.isEmpty else { throw BiLRPError.invalidArgument("correspondence '\(path)' holds no point matches") }
        return try Correspondence(width: width, height: height, points: points)
    }
}

extension PatchLabels {
    /// The file's JSON: `{"boxes": [{"label": "45", "box": [x0, y0, x1, y1]}, ...]}`, boxes in
    /// the pixels of the input as the model sees it (`width` x `height`).
    private struct File: Decodable {
        struct Entry: Decodable {
            var label: String
            var box: [Double]
            enum CodingKeys: String, CodingKey, CaseIterable { case label, box }
            init(from decoder: Decoder) throws {
                try decoder.rejectUnknownKeys(CodingKeys.self)
                let c = try decoder.container(keyedBy: CodingKeys.self)
                label = try c.decode(String.self, forKey: .label); box = try c.decode([Double].self, forKey: .box)
            }
        }
        var boxes: [Entry]
        enum CodingKeys: String, CodingKey, CaseIterable { case boxes }
        init(from decoder: Decoder) throws {
            try decoder.rejectUnknownKeys(CodingKeys.self)
            boxes = try decoder.container(keyedBy: CodingKeys.self).decode([Entry].self, forKey: .boxes)
        }
    }

    public static func read(path: String, width: Int, height: Int) throws -> PatchLabels {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw BiLRPError.io(FileManager.default.fileExists(atPath: path) ? "cannot read '\(path)'" : "no such file: '\(path)'")
        }
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: data)
        } catch let e as UnknownKeyError {
            throw BiLRPError.invalidArgument("labels '\(path)': \(e)")
        } catch {
            throw BiLRPError.invalidArgument("labels '\(path)': expected {\"boxes\": [{\"label\": ..., \"box\": [x0, y0, x1, y1]}, ...]} (\(error))")
        }
        let boxes = try file.boxes.enumerated().map { i, e in
            guard e.box.count == 4 else {
                throw BiLRPError.invalidArgument("labels '\(path)': box \(i + 1) ('\(e.label)') has \(e.box.count) numbers, expected x0, y0, x1, y1")
            }
            return Box(label: e.label, x0: e.box[0], y0: e.box[1], x1: e.box[2], y1: e.box[3])
        }
        return try PatchLabels(boxes: boxes, width: width, height: height, source: "labels '\(path)'")
    }
}
