import ArgumentParser
import BiLRP
import BiLRPIO
import BiLRPReference
import BiLRPServer
import BiLRPText
import Foundation

@main
struct BiLRPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bilrp",
        abstract: "Explain deep similarity models with BiLRP: which parts of two images match, and by how much.",
        version: BiLRPVersion.string,
        subcommands: [Explain.self, ExplainText.self, Heatmap.self, Eval.self, Inspect.self, Serve.self])

    /// A misspelt BILRP_* setting would silently run the default path: refuse to start instead.
    static func main() async {
        let problems = CKernelsBackend.environmentProblems()
        if !problems.isEmpty {
            for p in problems { FileHandle.standardError.write(Data("bilrp: error: \(p)\n".utf8)) }
            Foundation.exit(1)
        }
        await main(nil)
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The explanation server (HTTP, JSON). Default: the fetched ImageNet VGG-16 with the paper's settings; texts with --text-model.",
        discussion: "Options override the --config file, which overrides the defaults shown.")

    static let d = ServerConfiguration()

    @Option(help: "JSON configuration file (limits and settings; options below override it).") var config: String?
    @Option(help: "Address to listen on (default \(d.host)).") var host: String?
    @Option(help: "Port, 0 for any free port (default \(d.port)).") var port: Int?
    @Option(help: "ONNX model, or 'tables': the committed tables model with its defaults (default \(d.settings.model ?? "-")).")
    var model: String?
    @Option(help: "Safetensors weights with torchvision names (with --arch).") var weights: String?
    @Option(help: "Architecture for --weights (default \(d.settings.arch)).") var arch: String?
    @Option(help: "Cut: an integer keeps layers [0, L), a name cuts at that node or stage (default \(d.settings.layer?.description ?? "-")).")
    var layer: String?
    @Option(help: "Head (default \(d.settings.head)).") var head: String?
    @Option(help: "Rules (default \(d.settings.rules)).") var rules: String?
    @Option(help: "Patch size (default \(d.settings.patch)).") var patch: Int?
    @Option(help: "Image size (default \(d.settings.size)).") var size: Int?
    @Option(help: "Preprocessing (default \(d.settings.preprocess)).") var preprocess: PreprocessChoice?
    @Option(help: "Bearer token for /v1 and /metrics (or BILRP_TOKEN; default none).") var token: String?
    @Option(help: "Maximum request body in bytes (default \(d.maxBodyBytes)).") var maxBody: Int?
    @Option(help: "Maximum image pixels (default \(d.maxImagePixels)).") var maxPixels: Int?
    @Option(help: "Maximum items per batch (default \(d.maxBatch)).") var maxBatch: Int?
    @Option(help: "Maximum head outputs h a request may ask for (default \(d.maxOutputs)).") var maxOutputs: Int?
    @Option(help: "Maximum estimated memory of one explanation in MiB (default \(d.maxExplanationBytes >> 20)).") var maxMemoryMb: Int?
    @Option(help: "Request timeout in seconds (default \(d.timeoutSeconds)).") var timeout: Double?
    @Option(help: "Requests that may wait for a compute slot before 429 (default \(d.queueLimit)).") var queue: Int?
    @Option(help: "Explanations computed at once (default \(d.computeSlots)).") var slots: Int?
    @Option(help: "Factor cache size in MiB (default \(d.cacheBytes >> 20)).") var cacheMb: Int?
    @Option(help: "Open connections at most (default \(d.maxConnections)).") var maxConnections: Int?
    @Option(help: "Seconds before an idle connection is closed (default \(d.idleTimeoutSeconds)).") var idleTimeout: Double?
    @Option(help: "Log lines as text or json (default \(d.logFormat)).") var logFormat: LogFormat?
    @Option(help: "Worker threads for the C kernels (default: every core).") var threads: Int?
    @Option(help: "A sentence-transformers BERT folder: POST /v1/explain/text explains text pairs with it (default none).")
    var textModel: String?
    @Option(help: "Rules of the text model: cp-lrp, hp or a composite string (default \(d.textRules)).") var textRules: String?
    @Flag(help: "Serve texts only (needs --text-model): no image model is loaded.") var textOnly = false

    func run() async throws {
        do {
            var c = try config.map(ServerConfiguration.read(path:)) ?? ServerConfiguration()
            if let host { c.host = host }
            if let port { c.port = port }
            if let model { c.settings = c.settings.choosingModel(model) }
            if let weights { c.settings.weights = weights; c.settings.model = nil }
            if let arch { c.settings.arch = arch }
            if let layer { c.settings.layer = LayerCut(parsing: layer) }
            if let head { c.settings.head = head }
            if let rules { c.settings.rules = rules }
            if let patch { c.settings.patch = patch }
            if let size { c.settings.size = size }
            if let preprocess { c.settings.preprocess = preprocess.rawValue }
            c.token = token ?? ProcessInfo.processInfo.environment["BILRP_TOKEN"] ?? c.token
            if let maxBody { c.maxBodyBytes = maxBody }
            if let maxPixels { c.maxImagePixels = maxPixels }
            if let maxBatch { c.maxBatch = maxBatch }
            if let maxOutputs { c.maxOutputs = maxOutputs }
            if let maxMemoryMb { c.maxExplanationBytes = maxMemoryMb << 20 }
            if let timeout { c.timeoutSeconds = timeout }
            if let queue { c.queueLimit = queue }
            if let slots { c.computeSlots = slots }
            if let cacheMb { c.cacheBytes = cacheMb << 20 }
            if let maxConnections { c.maxConnections = maxConnections }
            if let idleTimeout { c.idleTimeoutSeconds = idleTimeout }
            if let logFormat { c.logFormat = logFormat.rawValue }
            if let textModel { c.textModel = textModel }
            if let textRules { c.textRules = textRules }
            if textOnly { c.textOnly = true }
            if let threads {
                guard threads >= 1 else { throw BiLRPError.invalidArgument("--threads must be at least 1") }
                CKernelsBackend.threads = threads
            }
            try c.validate()
            let host = c.host
            try await BiLRPServer.run(c) { port in
                FileHandle.standardOutput.write(Data("bilrp: serving on http://\(host):\(port)\n".utf8))
            }
        } catch let e as BiLRPError {
            fail("\(e)")
        } catch {
            // Bind errors and anything else the server start throws.
            fail("the server stopped: \(error)")
        }
    }
}

/// One `bilrp: error: ...` line on stderr and exit status 1.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("bilrp: error: \(message)\n".utf8))
    Foundation.exit(1)
}

enum PreprocessChoice: String, ExpressibleByArgument, CaseIterable { case auto, torchvision, caffe, ink }
enum LogFormat: String, ExpressibleByArgument, CaseIterable { case text, json, off }
extension Similarity: ExpressibleByArgument {}

/// Options shared by the commands that build an explainer.
struct ModelOptions: ParsableArguments {
    @Option(help: "ONNX model file (any DAG of the supported ops), or 'tables': the committed tables model (models/tables/) with its defaults (--preprocess ink --size 0 --head identity --rules tables).")
    var model: String?
    @Option(help: "Safetensors weights with torchvision names (features.0.weight, layer1.0.conv1.weight, ...).")
    var weights: String?
    @Option(help: "Architecture for --weights: vgg11, vgg13, vgg16, vgg19 (optionally -bn), resnet18, resnet34, resnet50, resnet101, resnet152, tables (scripts/train-tables.py).")
    var arch: String?
    @Option(help: "Cut: an integer keeps a chain's layers [0, L) (31 ends after pool5 of VGG-16); a name cuts at that node or stage (layer4, avgpool, layer3.1). Required with --model.")
    var layer: String?
    @Option(help: "Head: random:H[:SEED], identity, sumpool or avgpool (default random:100:0).") var head: String?
    @Option(help: "Projection matrix file (NPY or safetensors), (h, D) or (D, h); replaces --head.")
    var projection: String?
    @Option(help: "How the embeddings are compared.") var similarity: Similarity = .dot
    @Option(help: "Rule preset (paper-vgg, hp, epsilon-gamma-box, epsilon-plus-flat, tables) or composite string, e.g. '0:zb;1-10:gamma=0.5;11-:zero' (default paper-vgg).")
    var rules: String?
    @Option(help: "Patch size for pooling relevance (1: pixels).") var patch = 8
    @Option(help: "Resize (shorter side) and center-crop images to N x N; 0 keeps them (default 224).") var size: Int?
    @Option(help: "Preprocessing; auto: caffe for channels-last ONNX models, else torchvision.")
    var preprocess: PreprocessChoice = .auto
    @Option(help: "Worker threads for the C kernels.") var threads: Int?
    @Flag(help: "Compute with the slow pure-Swift reference kernels (for checking).") var reference = false
    @Flag(help: "No progress on stderr.") var quiet = false

    /// The settings: a named model's defaults (`--model tables`) or the general ones, then every
    /// option given.
    func settings(topK: Int = 10) -> ExplanationSettings {
        var s = model.map { ExplanationSettings().choosingModel($0) } ?? ExplanationSettings()
        if let weights { s.weights = weights }
        if let arch { s.arch = arch }
        s.layer = layer.map(LayerCut.init(parsing:))
        if let head { s.head = head }
        if let rules { s.rules = rules }
        if let size { s.size = size }
        // auto is the general default; a named model's own preprocessing stays unless one is given.
        if preprocess != .auto { s.preprocess = preprocess.rawValue }
        s.projection = projection; s.similarity = similarity.rawValue; s.patch = patch; s.topK = topK
        return s
    }

    func load(topK: Int = 10) throws -> LoadedExplainer {
        if let threads {
            guard threads >= 1 else { throw BiLRPError.invalidArgument("--threads must be at least 1") }
            CKernelsBackend.threads = threads
        }
        return try LoadedExplainer.load(settings(topK: topK), kernels: reference ? ReferenceKernels() : CKernelsBackend())
    }
}

/// Progress on stderr for steps that take a while.
struct Progress {
    var quiet: Bool
    func step<T>(_ what: String, _ body: () throws -> T) rethrows -> (T, Double) {
        let start = Date()
        if !quiet { FileHandle.standardError.write(Data("bilrp: \(what)...".utf8)) }
        let r = try body()
        let t = Date().timeIntervalSince(start)
        if !quiet { FileHandle.standardError.write(Data(String(format: " %.2f s\n", t).utf8)) }
        return (r, t)
    }
}

/// Runs a command body; library errors become one line on stderr and exit code 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as ExitCode {
        throw e
    } catch {
        FileHandle.standardError.write(Data("bilrp: error: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Explain the similarity of two images: R over patch pairs, pictures, JSON and NPY.")

    @Argument(help: "First image (PNG, JPEG, or .npy normalized (C, H, W)).") var first: String
    @Argument(help: "Second image.") var second: String
    @OptionGroup var options: ModelOptions
    @Option(help: "Pair picture (PNG): curves between matched patches over both images.") var out: String?
    @Option(help: "Marginal heatmaps picture (PNG): each input's first-order relevance.") var heatmap: String?
    @Option(help: "Pair-matrix picture (PNG): R as a P x Q heatmap.") var matrix: String?
    @Option(help: "The interactive viewer as one self-contained HTML file holding this pair.") var html: String?
    @Option(help: "JSON report (- for standard output).") var json: String?
    @Option(help: "R as a P x Q float32 NPY, row-major in patch order (- for standard output).") var npy: String?
    @Option(help: "Top pairs to report (each sign).") var top = 10
    @OptionGroup(title: "Pictures") var picture: PictureOptions

    func validate() throws {
        guard top >= 0 else { throw ValidationError("--top must be >= 0 (got \(top))") }
        guard options.patch >= 1 else { throw ValidationError("--patch must be at least 1 (got \(options.patch))") }
        guard !(json == "-" && npy == "-") else { throw ValidationError("only one of --json and --npy can write to standard output (-)") }
    }

    func run() throws {
        try reportingErrors {
            let progress = Progress(quiet: options.quiet)
            let total = Date()
            // The pictures' style first: a font that does not load stops the command before any work.
            let pictures = out != nil || heatmap != nil || matrix != nil
            var style = pictures || picture.font != nil ? try picture.style() : PairPictureStyle()
            let (loaded, tLoad) = try progress.step("loading model") { try options.load(topK: top) }
            style.grouping = picture.group ?? loaded.settings.pairGrouping
            let a = try loaded.input(first), b = try loaded.input(second)
            let ex = loaded.explainer
            let (fa, t1) = try progress.step("relevance factors of \(first)") { try ex.factors(a.tensor, patch: options.patch) }
            let (fb, t2) = try progress.step("relevance factors of \(second)") { try ex.factors(b.tensor, patch: options.patch) }
            let (pair, t3) = try progress.step("pair explanation") { try ex.explain(fa, fb) }
            if pictures {
                let caption = loaded.caption(inputs: (first, second))
                if let out { try AtomicFile.write(try Pictures.pairPicture(pair, a.display, b.display, style: style, caption: caption), to: out) }
                if let heatmap {
                    let data = try Pictures.heatmapPicture(pair, a.display, b.display, style: style, layout: picture.heatmapLayout, caption: caption)
                    try AtomicFile.write(data, to: heatmap)
                }
                if let matrix { try AtomicFile.write(try Pictures.matrixPicture(pair, style: style, caption: caption), to: matrix) }
            }
            let matrix = try Tensor(shape: [pair.rows, pair.columns], data: pair.relevance)
            if npy == "-" { FileHandle.standardOutput.write(NPY.encode(matrix)) } else if let npy { try NPY.write(matrix, to: npy) }
            let timings = ["load_seconds": tLoad, "factors_first_seconds": t1, "factors_second_seconds": t2,
                           "pair_seconds": t3, "total_seconds": Date().timeIntervalSince(total)]
            let report = ExplanationReport(pair, loaded: loaded, sources: (first, second), timings: timings)
            if let html {
                let page = try Viewer.selfContained(report, relevance: pair.relevance, rows: pair.rows, columns: pair.columns,
                                                    images: (a.display, b.display))
                try AtomicFile.write(page, to: html)
            }
            if json == "-" { FileHandle.standardOutput.write(try report.json() + Data("\n".utf8)) } else if let json {
                try AtomicFile.write(try report.json(), to: json)
            }
            // The summary goes to stderr when stdout carries the JSON or the NPY.
            let say: (String) -> Void = json == "-" || npy == "-"
                ? { FileHandle.standardError.write(Data(($0 + "\n").utf8)) } : { print($0) }
            let c = pair.conservation
            say(String(format: "similarity %.6g   sum R %.6g   relative error %.3g   patches %d x %d",
                         pair.similarity, c.relevanceSum, c.relativeError, pair.rows, pair.columns))
            for (i, p) in pair.topPositive(min(top, 5)).enumerated() {
                say(String(format: "  #%d  %+.4g  (%d,%d)-(%d,%d)  <->  (%d,%d)-(%d,%d)", i + 1, p.value,
                             p.first.x0, p.first.y0, p.first.x1, p.first.y1, p.second.x0, p.second.y0, p.second.x1, p.second.y1))
            }
        }
    }
}

/// `bilrp explain-text`: token-pair BiLRP of two texts under a sentence encoder.
struct ExplainText: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain-text",
        abstract: "Explain the similarity of two texts under a sentence-embedding model: R over token pairs, JSON and NPY.")

    @Argument(help: "First text (with --file: a UTF-8 file holding it).") var first: String
    @Argument(help: "Second text (with --file: a file).") var second: String
    @Flag(help: "The two arguments are paths of UTF-8 text files.") var file = false
    @Option(help: "A sentence-transformers BERT folder (config.json, model.safetensors, vocab.txt, tokenizer.json, 1_Pooling/).")
    var model = "assets/models/all-MiniLM-L6-v2"
    @Option(help: "Rules: cp-lrp (conservative propagation, Ali et al. 2022), hp (true gradients: Hessian x Product) or a composite string.")
    var rules = "cp-lrp"
    @Option(help: "How the embeddings are compared (default: cosine when the model normalizes, else dot).")
    var similarity: Similarity?
    @Option(help: "Pair picture (PNG): the two texts as lines of tokens, curves between matched tokens.") var out: String?
    @Option(help: "Token-pair matrix picture (PNG): R as a T1 x T2 heatmap with the tokens along the axes.") var matrix: String?
    @Option(help: "JSON report (- for standard output).") var json: String?
    @Option(help: "R as a T1 x T2 float32 NPY, row-major (- for standard output).") var npy: String?
    @Option(help: "Top pairs to report (each sign).") var top = 10
    @Option(help: "TrueType font for the pictures (default: DejaVu Sans).") var font: String?
    @Option(help: "Worker threads for the C kernels.") var threads: Int?
    @Flag(help: "No progress on stderr.") var quiet = false

    func validate() throws {
        guard top >= 0 else { throw ValidationError("--top must be >= 0 (got \(top))") }
        guard !(json == "-" && npy == "-") else { throw ValidationError("only one of --json and --npy can write to standard output (-)") }
    }

    func text(_ argument: String) throws -> String {
        guard file else { return argument }
        guard let data = FileManager.default.contents(atPath: argument) else { throw BiLRPError.io("cannot read '\(argument)'") }
        guard let s = String(data: data, encoding: .utf8) else { throw BiLRPError.io("'\(argument)' is not valid UTF-8 text") }
        return s
    }

    func run() throws {
        try reportingErrors {
            if let threads {
                guard threads >= 1 else { throw BiLRPError.invalidArgument("--threads must be at least 1") }
                CKernelsBackend.threads = threads
            }
            let progress = Progress(quiet: quiet)
            let total = Date()
            let (a, b) = (try text(first), try text(second))
            let (ex, tLoad) = try progress.step("loading \(model)") {
                try TextExplainer(encoder: try SentenceEncoder.load(directory: model), rules: rules, similarity: similarity)
            }
            let (fa, t1) = try progress.step("relevance factors of the first text") { try ex.factors(a) }
            let (fb, t2) = try progress.step("relevance factors of the second text") { try ex.factors(b) }
            let (e, t3) = try progress.step("pair explanation") { try ex.explain(fa, fb) }
            let say: (String) -> Void = json == "-" || npy == "-"
                ? { FileHandle.standardError.write(Data(($0 + "\n").utf8)) } : { print($0) }
            for note in ex.notes(e) { say("note: " + note) }
            if out != nil || matrix != nil {
                var style = PairPictureStyle()
                style.font = try font.map { try Typeface(path: $0) }
                let figure = ex.figure(e, source: model)
                if let out { try AtomicFile.write(try Pictures.tokenPairPicture(figure, style: style), to: out) }
                if let matrix { try AtomicFile.write(try Pictures.tokenMatrixPicture(figure, style: style), to: matrix) }
            }
            let R = try e.relevanceTensor()
            if npy == "-" { FileHandle.standardOutput.write(NPY.encode(R)) } else if let npy { try NPY.write(R, to: npy) }
            let timings = ["load_seconds": tLoad, "factors_first_seconds": t1, "factors_second_seconds": t2,
                           "pair_seconds": t3, "total_seconds": Date().timeIntervalSince(total)]
            let report = TextExplanationReport(e, explainer: ex, source: model, top: top, timings: timings)
            if json == "-" { FileHandle.standardOutput.write(try report.json() + Data("\n".utf8)) } else if let json {
                try AtomicFile.write(try report.json(), to: json)
            }
            let c = e.pair.conservation
            say(String(format: "similarity %.6g   sum R %.6g   relative error %.3g   tokens %d x %d",
                       e.pair.similarity, c.relevanceSum, c.relativeError, e.first.tokens.count, e.second.tokens.count))
            for (i, p) in e.top(min(top, 5)).enumerated() {
                say(String(format: "  #%d  %+.4g  ", i + 1, p.value) + "\(p.first.token) <-> \(p.second.token)")
            }
        }
    }
}

/// How `bilrp explain` draws its pictures.
struct PictureOptions: ParsableArguments {
    @Option(help: "Pair picture: soft threshold t1 (in units of (mean R^4)^(1/4)).") var threshold: Float = 0.25
    @Option(help: "Pair picture and matrix: clip t2 (same units).") var clip: Float = 12.75
    @Option(help: "Pair picture: draw at most this many pairs (the strongest).") var pairs = 4000
    @Option(help: "Pair picture: outline and number the patches of this many top pairs.") var boxes = 5
    @Option(help: "Pair picture: a curve per patch pair, or per matched region (pairs grouped where both patches touch; default for the tables model).")
    var group: PairPictureStyle.Grouping?
    @Option(help: "Background of the pictures: grey (the curves are the only colour) or color.")
    var background: PairPictureStyle.Background = .grey
    @Option(name: .customLong("heatmap-layout"), help: "Heatmaps as an overlay on the images (with a colour bar) or as squares below them.")
    var heatmapLayout: Pictures.HeatmapLayout = .overlay
    @Option(help: "Pixels per input pixel (0: each image at least 384 pixels wide).") var scale = 0
    @Option(help: "TrueType font for the legends (default: DejaVu Sans).") var font: String?
    @Flag(name: .customLong("no-legend"), help: "Pictures without the legend strip.") var noLegend = false

    func validate() throws {
        guard threshold >= 0 else { throw ValidationError("--threshold must be >= 0 (got \(threshold))") }
        guard clip > 0 else { throw ValidationError("--clip must be > 0 (got \(clip))") }
        guard pairs >= 0 else { throw ValidationError("--pairs must be >= 0 (got \(pairs))") }
        guard boxes >= 0 else { throw ValidationError("--boxes must be >= 0 (got \(boxes))") }
        guard (0...64).contains(scale) else { throw ValidationError("--scale must be 0 (automatic) to 64 (got \(scale))") }
    }

    /// The style; a --font that does not load is an error, a missing default font a warning.
    func style() throws -> PairPictureStyle {
        var s = PairPictureStyle()
        s.softThreshold = threshold; s.clip = clip; s.maxPairs = pairs; s.boxes = boxes
        s.background = background; s.scale = scale; s.legend = !noLegend
        if let font {
            s.font = try Typeface(path: font)
        } else if !noLegend {
            do { s.font = try Typeface.standard() } catch {
                FileHandle.standardError.write(Data("bilrp: warning: pictures without text: \(error)\n".utf8))
            }
        }
        return s
    }
}

extension PairPictureStyle.Background: ExpressibleByArgument {}
extension PairPictureStyle.Grouping: ExpressibleByArgument {}
extension Pictures.HeatmapLayout: ExpressibleByArgument {}

struct Heatmap: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "First-order LRP of one image: for one output phi_m, or for the similarity to a second image.")

    @Argument(help: "Image to explain.") var image: String
    @Option(help: "Explain the similarity to this image (held fixed).") var to: String?
    @Option(help: "Explain output m of the head (0-based).") var output: Int?
    @OptionGroup var options: ModelOptions
    @Option(help: "Heatmap picture (PNG).") var out: String?
    @Option(help: "The channel-summed map as an H x W float32 NPY.") var npy: String?

    func run() throws {
        try reportingErrors {
            guard (to == nil) != (output == nil) else {
                throw BiLRPError.invalidArgument("give exactly one of --to IMAGE or --output M")
            }
            let progress = Progress(quiet: options.quiet)
            let (loaded, _) = try progress.step("loading model") { try options.load() }
            let x = try loaded.input(image)
            let ex = loaded.explainer
            let phi = try ex.embedding(x.tensor)
            var r = [Float](repeating: 0, count: phi.count)
            if let output {
                guard output >= 0, output < phi.count else {
                    throw BiLRPError.invalidArgument("--output \(output) is out of range: the head has \(phi.count) outputs")
                }
                r[output] = phi[output]
            } else if let to {
                let other = try ex.embedding(try loaded.input(to).tensor)
                var scale: Float = 1
                if ex.similarity == .cosine {
                    let n = (phi.reduce(0) { $0 + $1 * $1 } * other.reduce(0) { $0 + $1 * $1 }).squareRoot()
                    scale = n > 0 ? 1 / n : 0
                }
                // Output m contributes phi_m phi'_m to y: that is its relevance.
                r = zip(phi, other).map { $0 * $1 * scale }
            }
            let (map, _) = try progress.step("relevance of \(image)") { try ex.relevance(x.tensor, outputRelevance: r) }
            // Channel sum (patch 1) for the NPY, and patch sums for the picture: the library's pooling.
            let s = try map.shape3()
            let grid = PatchGrid(height: s.height, width: s.width, patch: options.patch)
            var summed = [Float](repeating: 0, count: s.height * s.width)
            var pooled = [Float](repeating: 0, count: grid.count)
            let kernels = CKernelsBackend()
            summed.withUnsafeMutableBufferPointer { kernels.patchPool(n: 1, map.data, s, patch: 1, $0.baseAddress!) }
            pooled.withUnsafeMutableBufferPointer { kernels.patchPool(n: 1, map.data, s, patch: options.patch, $0.baseAddress!) }
            if let out { try AtomicFile.write(try Pictures.heatmaps([(x.display, grid, pooled)]), to: out) }
            if let npy { try NPY.write(try Tensor(shape: [s.height, s.width], data: summed), to: npy) }
            print(String(format: "sum of relevance %.6g   explained value %.6g", summed.reduce(0, +), r.reduce(0, +)))
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a model's nodes, their ops, inputs, output shapes, parameters and the --layer values that cut at each.")

    @Argument(help: "ONNX model, or safetensors weights (with --arch); none: the --arch structure with random weights.")
    var model: String?
    @Option(help: "Architecture for safetensors weights.") var arch = "vgg16"
    @Option(help: "Input size N (N x N, 3 channels; N tokens for a sequence model) for the shapes; default: the model's own, or 224.") var size: Int?

    func run() throws {
        try reportingErrors {
            let graph: Graph
            var unsupported: [String] = []
            var inputSize = size
            var sequence: (features: Int, tokens: Int)? = nil
            if let model, model.lowercased().hasSuffix(".onnx") {
                let m = try ONNXImporter.load(path: model)
                graph = m.graph; unsupported = m.unsupported
                if inputSize == nil, let s = m.inputShape { inputSize = m.sequenceInput ? s.width : s.height }
                if m.sequenceInput, let s = m.inputShape { sequence = (s.channels, inputSize ?? s.width) }
                let layout = m.sequenceInput ? "a sequence (N, T, D), tokens x features"
                    : m.channelsLastInput ? "channels-last (N, H, W, C), transposed" : "(N, C, H, W)"
                print("ONNX model \(model): producer \(m.producer.isEmpty ? "-" : m.producer), input \(layout), layers numbered by \(m.numbering)")
            } else if let model {
                let file = try SafetensorsFile(path: model)
                if let r = ResNet(rawValue: arch.lowercased()) {
                    graph = try r.graph(weights: file)  // all of it, fc when the file has it
                } else {
                    graph = try LoadedExplainer.architecture(arch, cut: nil, weights: file)
                }
                print("\(arch) from \(model)")
            } else {
                graph = try Inspect.structure(arch)
                print("\(arch): the architecture with random weights")
            }
            let n = inputSize ?? 224
            let input = sequence.map { Shape3($0.features, 1, $0.tokens) } ?? Shape3(3, n, n)
            let stored = (try? graph.shapes(for: input)) ?? [:]
            // A sequence model's values as the file has them: (T, D) sequences, (D) vectors.
            let shapes = stored.mapValues { s in
                sequence == nil ? s.description : s.width == 1 ? "[\(s.channels)]" : "[\(s.width), \(s.channels)]"
            }
            func pad(_ s: String, _ n: Int, left: Bool = false) -> String {
                let fill = String(repeating: " ", count: max(0, n - s.count))
                return left ? fill + s : s + fill
            }
            func params(_ op: Graph.Op) -> Int {
                if case let .layer(l) = op { return l.parameterCount }
                return 0
            }
            // Columns as wide as their longest entry (op names of dilated convolutions and pads are long).
            func width(_ items: [String], _ header: String) -> Int { max(header.count, items.map(\.count).max() ?? 0) + 2 }
            let opW = width(graph.nodes.map(\.op.name), "layer")
            if graph.chainLength > 0 {
                print(pad("index", 5, left: true) + "  " + pad("layer", opW) + pad("output shape", 18) + pad("parameters", 11, left: true) + "  --layer  node")
                for node in graph.nodes {
                    let i = node.index!
                    print(pad("\(i)", 5, left: true) + "  " + pad(node.op.name, opW) + pad(shapes[node.output] ?? "does not fit", 18)
                          + pad("\(params(node.op))", 11, left: true) + "  " + pad("\(i + 1)", 7) + "  " + node.name)
                }
            } else {
                // A torch export's nodes sit in modules; --layer takes a module path too (its last node).
                let modules = graph.nodes.map { ONNXImporter.modulePaths($0.name).last ?? "" }
                let showModules = modules.contains { !$0.isEmpty }
                let nameW = width(graph.nodes.map(\.name), "node (--layer NAME)")
                let moduleW = width(modules, "module (--layer NAME)")
                print(pad("#", 4, left: true) + "  " + pad("node (--layer NAME)", nameW)
                      + (showModules ? pad("module (--layer NAME)", moduleW) : "") + pad("op", opW) + pad("output shape", 18)
                      + pad("parameters", 11, left: true) + "  inputs")
                for (i, node) in graph.nodes.enumerated() {
                    print(pad("\(i)", 4, left: true) + "  " + pad(node.name, nameW) + (showModules ? pad(modules[i], moduleW) : "")
                          + pad(node.op.name, opW) + pad(shapes[node.output] ?? "does not fit", 18)
                          + pad("\(params(node.op))", 11, left: true) + "  " + node.inputs.joined(separator: ", "))
                }
                if let r = ResNet(rawValue: arch.lowercased()), model == nil || !(model!.lowercased().hasSuffix(".onnx")) {
                    print("stages (--layer): \(r.stageNames.joined(separator: ", "))")
                }
            }
            print("parameters: \(graph.parameterCount)")
            for u in unsupported { print("not supported: \(u) (nodes that read it cannot be used)") }
        }
    }

    /// The architecture's graph with seeded weights: the structure, for listing.
    static func structure(_ arch: String) throws -> Graph {
        if let r = ResNet(rawValue: arch.lowercased()) { return try r.graph(seed: 0) }
        let (vgg, bn) = try LoadedExplainer.parseArch(arch)
        return Graph(chain: try vgg.features(batchNorm: bn, seed: 0))
    }
}

extension PerturbationBaseline: ExpressibleByArgument {}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure how faithful pair explanations are: pair perturbation and correspondence accuracy against HP, the marginals' product and random.",
        discussion: """
            Pairs: two images (FIRST SECOND), an image and --transform (a known correspondence), --images DIR with \
            --transform (every image of the folder against its transformed copy), or --pairs CSV (header: first, second or \
            transform, optional correspondence, first_labels and second_labels, related, name; paths relative to the CSV). \
            Labels files (JSON: {"boxes": [{"label": "45", "box": [x0, y0, x1, y1]}]}) mark what each image holds: a pair of \
            patches is right when both hold one label. With a related column (true, false), the report gives how well y \
            separates the two groups (ROC AUC). Orderings on each pair: BiLRP with \
            --rules (and each --also-rules), the product of its two first-order marginals, HP (the hp preset) and random \
            orderings; with ground truth also precision at k and best-match accuracy.
            """)

    @Argument(help: "FIRST SECOND, or one image with --transform.") var inputs: [String] = []
    @Option(help: "A CSV of pairs (header: first, second | transform, optional correspondence | first_labels and second_labels, related, name).")
    var pairs: String?
    @Option(help: "A folder of images, each evaluated against its --transform copies.") var images: String?
    @Option(help: "shift:DX,DY, scale:S, crop:X,Y,W,H or hflip (repeatable): pairs with a known correspondence.")
    var transform: [String] = []
    @Option(help: "Ground truth for FIRST SECOND: an NPY of offsets (H, W, 2) or a CSV of point matches x,y,x2,y2, in model pixels.")
    var correspondence: String?
    @OptionGroup var options: ModelOptions
    @Option(help: "Cuts to evaluate, comma-separated (e.g. 17,24,31); replaces --layer.") var layers: String?
    @Option(name: .customLong("also-rules"), help: "Further rule settings to compare with --rules (repeatable).")
    var alsoRules: [String] = []
    @Option(help: "Perturbation steps per curve (0: no curves, only the ground truth's scores and the similarity).") var steps = 12
    @Option(help: "What a removed patch becomes: mean (each channel's mean), blur (the patch blurred), zero.")
    var baseline: PerturbationBaseline = .mean
    @Option(help: "Random orderings per pair.") var seeds = 3
    @Option(name: .customLong("top-k"), help: "k of the precision at k.") var topK = 20
    @Option(help: "Pixels a second patch is grown by when checked against the true match (default: half a patch).")
    var tolerance: Double?
    @Option(name: .customLong("best-fraction"), help: "Share of the most relevant first patches whose best match is checked.")
    var bestFraction = 0.25
    @Option(help: "Every number as JSON.") var json: String?
    @Option(help: "The mean curves with their spread (PNG).") var plot: String?
    @Option(help: "TrueType font for the plot (default: DejaVu Sans).") var font: String?

    func evaluationPairs() throws -> [EvaluationPair] {
        let transforms = try transform.map(SyntheticTransform.init(parsing:))
        let sources = [pairs != nil, images != nil, !inputs.isEmpty].filter { $0 }.count
        guard sources == 1 else {
            throw BiLRPError.invalidArgument("give the pairs one way: FIRST SECOND, IMAGE --transform T, --images DIR --transform T, or --pairs CSV")
        }
        guard correspondence == nil || inputs.count == 2 else {
            throw BiLRPError.invalidArgument("--correspondence goes with two images FIRST SECOND (in a CSV, use its correspondence column)")
        }
        if let pairs {
            guard transforms.isEmpty else { throw BiLRPError.invalidArgument("--transform does not combine with --pairs (use its transform column)") }
            return try EvaluationPair.list(csv: pairs)
        }
        if let images {
            guard !transforms.isEmpty else { throw BiLRPError.invalidArgument("--images needs at least one --transform") }
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: images) else {
                throw BiLRPError.io("cannot list the folder '\(images)'")
            }
            let files = names.filter { ["png", "jpg", "jpeg"].contains(($0 as NSString).pathExtension.lowercased()) }.sorted()
            guard !files.isEmpty else { throw BiLRPError.invalidArgument("the folder '\(images)' holds no PNG or JPEG images") }
            return try files.flatMap { f in
                try transforms.map { try EvaluationPair(first: (images as NSString).appendingPathComponent(f), transform: $0) }
            }
        }
        switch inputs.count {
        case 1:
            guard !transforms.isEmpty else { throw BiLRPError.invalidArgument("one image needs --transform (or give a second image)") }
            return try transforms.map { try EvaluationPair(first: inputs[0], transform: $0) }
        case 2:
            guard transforms.isEmpty else { throw BiLRPError.invalidArgument("--transform goes with one image, not with FIRST SECOND") }
            return [try EvaluationPair(first: inputs[0], second: inputs[1], correspondence: correspondence)]
        default:
            throw BiLRPError.invalidArgument("expected FIRST SECOND or one image with --transform, got \(inputs.count) inputs")
        }
    }

    func run() throws {
        try reportingErrors {
            var o = EvaluationOptions()
            o.steps = steps; o.baseline = baseline; o.seeds = seeds; o.topK = topK; o.tolerance = tolerance
            o.bestMatchFraction = bestFraction
            try o.validate()
            let list = try evaluationPairs()
            guard plot == nil || o.steps > 0 else { throw BiLRPError.invalidArgument("--plot draws the perturbation curves: it needs --steps of at least 1") }
            for path in [json, plot].compactMap({ $0 }) {
                let dir = (path as NSString).deletingLastPathComponent
                var isDir: ObjCBool = false
                guard dir.isEmpty || (FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) && isDir.boolValue) else {
                    throw BiLRPError.io("cannot write '\(path)': no folder '\(dir)'")
                }
            }
            let typeface: Typeface? = plot == nil ? nil : try font.map(Typeface.init(path:)) ?? (try? Typeface.standard())
            if let threads = options.threads {
                guard threads >= 1 else { throw BiLRPError.invalidArgument("--threads must be at least 1") }
                CKernelsBackend.threads = threads
            }
            let settings = options.settings()
            let cuts: [LayerCut?] = try layers.map { text in
                let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                guard !parts.isEmpty else { throw BiLRPError.invalidArgument("--layers is empty") }
                return parts.map { LayerCut(parsing: $0) }
            } ?? [settings.layer]
            let quiet = options.quiet
            let report = try Evaluation.run(
                pairs: list, settings: settings, layers: cuts, rules: [settings.rules] + alsoRules, options: o,
                kernels: options.reference ? ReferenceKernels() : CKernelsBackend(),
                progress: { line in if !quiet { FileHandle.standardError.write(Data("bilrp: \(line)\n".utf8)) } })
            if let json { try AtomicFile.write(try report.json(), to: json) }
            if let plot { try AtomicFile.write(try EvaluationPlot.png(report, font: typeface), to: plot) }
            print(report.table())
        }
    }
}
