import BiLRP
import CImageIO
import Foundation

/// An RGB image, values in [0, 1], interleaved (H, W, 3).
public struct RGBImage: Sendable, Equatable {
    public var width: Int, height: Int
    public var pixels: [Float]
    /// "png", "jpeg", or "npy"/"generated" for images that did not come from a file.
    public var format: String = "generated"

    public init(width: Int, height: Int, pixels: [Float]) throws {
        guard width > 0, height > 0, pixels.count == width * height * 3 else {
            throw BiLRPError.shapeMismatch(what: "RGB image", expected: "\(width) x \(height) x 3 values", found: "\(pixels.count)")
        }
        self.width = width; self.height = height; self.pixels = pixels
    }

    /// Default refusal threshold for decoding: 100 megapixels.
    public static let defaultMaxPixels = 100_000_000

    /// Decodes PNG (8/16-bit; gray, gray+alpha, RGB, RGBA, palette) or JPEG (baseline, progressive).
    /// Alpha is dropped. A corrupt or truncated file throws an error that says so.
    public static func decode(_ data: Data, name: String = "image", maxPixels: Int = defaultMaxPixels) throws -> RGBImage {
        var img = ci_image()
        var err = [CChar](repeating: 0, count: 512)
        let rc = data.withUnsafeBytes { raw -> Int32 in
            guard let base = raw.baseAddress else { return -1 }
            return ci_decode(base.assumingMemoryBound(to: UInt8.self), raw.count, maxPixels, &img, &err, err.count)
        }
        guard rc == 0 else {
            let message = data.isEmpty ? "empty file" : cString(err)
            throw BiLRPError.io("cannot decode image '\(name)': \(message)")
        }
        defer { ci_free(&img) }
        let count = Int(img.width) * Int(img.height) * 3
        var out = try RGBImage(width: Int(img.width), height: Int(img.height),
                               pixels: Array(UnsafeBufferPointer(start: img.rgb, count: count)))
        out.format = String(cString: img.format)
        return out
    }

    public static func load(path: String, maxPixels: Int = defaultMaxPixels) throws -> RGBImage {
        guard FileManager.default.fileExists(atPath: path) else { throw BiLRPError.io("no such file: '\(path)'") }
        guard let data = FileManager.default.contents(atPath: path) else { throw BiLRPError.io("cannot read '\(path)'") }
        return try decode(data, name: path, maxPixels: maxPixels)
    }

    public subscript(x: Int, y: Int, c: Int) -> Float { pixels[(y * width + x) * 3 + c] }

    /// Resized with a triangle (bilinear) filter whose support widens with the scale when shrinking,
    /// i.e. antialiased like PIL's and torchvision's `antialias=True` bilinear resize.
    public func resized(width w: Int, height h: Int) -> RGBImage {
        if w == width && h == height { return self }
        // Rows first: (height, width) -> (height, w); then columns: (height, w) -> (h, w).
        let horizontal = RGBImage.resample(pixels, count: height, from: width, to: w, stride: 1, lineStride: width,
                                           outStride: 1, outLineStride: w)
        let vertical = RGBImage.resample(horizontal, count: w, from: height, to: h, stride: w, lineStride: 1,
                                         outStride: w, outLineStride: 1)
        var out = try! RGBImage(width: w, height: h, pixels: vertical)
        out.format = format
        return out
    }

    /// Resamples `count` lines of length `n` to length `m`. Element (line l, position i) is at
    /// (l * lineStride + i * stride) * 3 in the input, and at (l * outLineStride + i * outStride) * 3 in the output.
    static func resample(_ src: [Float], count: Int, from n: Int, to m: Int, stride: Int, lineStride: Int,
                         outStride: Int, outLineStride: Int) -> [Float] {
        let scale = Double(n) / Double(m)
        let support = max(scale, 1.0)
        var weights: [(start: Int, w: [Double])] = []
        for i in 0..<m {
            let center = (Double(i) + 0.5) * scale
            let lo = max(0, Int((center - support).rounded(.down)))
            let hi = min(n, Int((center + support).rounded(.up)))
            var w: [Double] = []
            for j in lo..<hi {
                let t = abs((Double(j) + 0.5 - center) / support)
                w.append(max(0, 1 - t))
            }
            let total = w.reduce(0, +)
            weights.append((lo, total > 0 ? w.map { $0 / total } : w))
        }
        var out = [Float](repeating: 0, count: count * m * 3)
        for l in 0..<count {
            for i in 0..<m {
                var acc = (0.0, 0.0, 0.0)
                let (start, w) = weights[i]
                for (k, wk) in w.enumerated() {
                    let idx = (l * lineStride + (start + k) * stride) * 3
                    acc.0 += wk * Double(src[idx]); acc.1 += wk * Double(src[idx + 1]); acc.2 += wk * Double(src[idx + 2])
                }
                let o = (l * outLineStride + i * outStride) * 3
                out[o] = Float(acc.0); out[o + 1] = Float(acc.1); out[o + 2] = Float(acc.2)
            }
        }
        return out
    }

    /// The central w x h region.
    public func centerCropped(width w: Int, height h: Int) -> RGBImage {
        let w = min(w, width), h = min(h, height)
        let x0 = (width - w) / 2, y0 = (height - h) / 2
        var px = [Float](repeating: 0, count: w * h * 3)
        for y in 0..<h {
            for x in 0..<w { for c in 0..<3 { px[(y * w + x) * 3 + c] = pixels[((y + y0) * width + x + x0) * 3 + c] } }
        }
        var out = try! RGBImage(width: w, height: h, pixels: px)
        out.format = format
        return out
    }

    /// torchvision's Resize(size) + CenterCrop(size): shorter side to `size`, then the central square.
    public func resizedAndCropped(to size: Int) -> RGBImage {
        let s = Double(size) / Double(min(width, height))
        let w = max(size, Int((Double(width) * s).rounded())), h = max(size, Int((Double(height) * s).rounded()))
        return resized(width: w, height: h).centerCropped(width: size, height: size)
    }

    /// (3, H, W) planar RGB in [0, 1].
    public var planar: Tensor {
        var out = [Float](repeating: 0, count: pixels.count)
        let plane = width * height
        for i in 0..<plane { for c in 0..<3 { out[c * plane + i] = pixels[i * 3 + c] } }
        return try! Tensor(shape: [3, height, width], data: out)
    }

    /// From (3, H, W) planar RGB.
    public init(planar t: Tensor) throws {
        let s = try t.shape3("image")
        guard s.channels == 3 else { throw BiLRPError.shapeMismatch(what: "image", expected: "3 channels", found: "\(s.channels)") }
        let plane = s.height * s.width
        var px = [Float](repeating: 0, count: t.count)
        for i in 0..<plane { for c in 0..<3 { px[i * 3 + c] = t.data[c * plane + i] } }
        try self.init(width: s.width, height: s.height, pixels: px)
    }

    /// 8-bit RGB PNG.
    public func pngData() throws -> Data {
        let bytes = pixels.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) }
        return try PNGEncoder.encode(rgb: bytes, width: width, height: height, channels: 3)
    }
}

public enum PNGEncoder {
    public static func encode(rgb bytes: [UInt8], width: Int, height: Int, channels: Int) throws -> Data {
        var out: UnsafeMutablePointer<UInt8>? = nil
        var size = 0
        var err = [CChar](repeating: 0, count: 256)
        let rc = ci_encode_png(bytes, Int32(width), Int32(height), Int32(channels), &out, &size, &err, err.count)
        guard rc == 0, let out else { throw BiLRPError.io("PNG encoding failed: \(cString(err))") }
        defer { ci_free_buffer(out) }
        return Data(bytes: out, count: size)
    }
}

extension Preprocessing {
    /// The inverse of `normalize`, for showing a model input: (3, H, W) normalized -> RGB in [0, 1].
    public func denormalize(_ t: Tensor) throws -> RGBImage {
        let s = try t.shape3("input")
        if self == .ink, s.channels == 1 {
            let grey = t.data.map { 1 - max(0, min(1, $0)) }
            return try RGBImage(planar: try Tensor(shape: [3, s.height, s.width], data: grey + grey + grey))
        }
        guard s.channels == 3 else { throw BiLRPError.shapeMismatch(what: "input", expected: "3 channels", found: "\(s.channels)") }
        let plane = s.height * s.width
        var rgb = [Float](repeating: 0, count: t.count)
        for c in 0..<3 {
            let dst = isBGR ? 2 - c : c
            for i in 0..<plane {
                rgb[dst * plane + i] = max(0, min(1, (t.data[c * plane + i] * std[c] + mean[c]) / pixelScale))
            }
        }
        return try RGBImage(planar: try Tensor(shape: t.shape, data: rgb))
    }
}

/// An input ready for a model: the normalized tensor and the RGB picture of exactly what the model saw.
public struct PreparedInput: Sendable {
    public var tensor: Tensor
    public var display: RGBImage
    public var source: String

    /// Reads a PNG/JPEG (resized and center-cropped to `size` when given, then normalized) or a
    /// `.npy` file holding an already-normalized (C, H, W) tensor (used as it is).
    public static func load(path: String, size: Int?, preprocessing: Preprocessing,
                            maxPixels: Int = RGBImage.defaultMaxPixels) throws -> PreparedInput {
        if path.lowercased().hasSuffix(".npy") {
            let t = try NPY.read(path: path)
            let s = try t.shape3("NPY input '\(path)'")
            let display = s.channels == 3 || preprocessing == .ink ? try preprocessing.denormalize(t)
                : try RGBImage(width: s.width, height: s.height, pixels: [Float](repeating: 0.5, count: s.width * s.height * 3))
            return PreparedInput(tensor: t, display: display, source: path)
        }
        var img = try RGBImage.load(path: path, maxPixels: maxPixels)
        if let size { img = img.resizedAndCropped(to: size) }
        return PreparedInput(tensor: try preprocessing.normalize(rgb: img.planar), display: img, source: path)
    }
}

/// The text of a NUL-terminated C buffer.
func cString(_ buffer: [CChar]) -> String {
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}
