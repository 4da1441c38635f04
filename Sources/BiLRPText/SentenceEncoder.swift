import BiLRP
import BiLRPIO
import Foundation

/// The parts of a Hugging Face BERT `config.json` the encoder uses.
public struct BertConfig: Sendable, Equatable {
    public var hiddenSize: Int
    public var layers: Int
    public var heads: Int
    public var intermediateSize: Int
    public var layerNormEpsilon: Float
    public var maxPositions: Int
    public var typeVocabularySize: Int
    public var vocabularySize: Int

    /// Checks the model type, the activation and the position embeddings, and the sizes.
    public init(json: [String: Any], path: String) throws {
        func int(_ key: String) throws -> Int {
            guard let v = json[key] as? Int, v > 0 else {
                throw BiLRPError.invalidArgument("\(path): '\(key)' must be a positive integer")
            }
            return v
        }
        let type = json["model_type"] as? String ?? "none"
        guard type == "bert" else {
            throw BiLRPError.unsupported("\(path): model_type '\(type)'; supported: bert (BERT-family sentence encoders)")
        }
        let act = json["hidden_act"] as? String ?? "gelu"
        guard act == "gelu" else { throw BiLRPError.unsupported("\(path): hidden_act '\(act)'; supported: gelu") }
        let positions = json["position_embedding_type"] as? String ?? "absolute"
        guard positions == "absolute" else {
            throw BiLRPError.unsupported("\(path): position_embedding_type '\(positions)'; supported: absolute")
        }
        hiddenSize = try int("hidden_size")
        layers = try int("num_hidden_layers")
        heads = try int("num_attention_heads")
        intermediateSize = try int("intermediate_size")
        maxPositions = try int("max_position_embeddings")
        typeVocabularySize = try int("type_vocab_size")
        vocabularySize = try int("vocab_size")
        layerNormEpsilon = Float((json["layer_norm_eps"] as? Double) ?? 1e-12)
        guard hiddenSize % heads == 0 else {
            throw BiLRPError.invalidArgument("\(path): hidden_size \(hiddenSize) is not divisible by num_attention_heads \(heads)")
        }
    }
}

/// How token vectors become the sentence vector (sentence-transformers' `1_Pooling/config.json`).
public enum SentencePooling: String, Sendable {
    case mean, cls
}

/// A BERT-family sentence encoder (all-MiniLM-L6-v2, all-MiniLM-L12-v2, ...) as a graph the engine
/// explains: the input is the sum of word, position and token-type embeddings of a tokenized text,
/// (T, D); the graph runs the embedding LayerNorm, the transformer layers (self-attention, residual
/// adds, LayerNorms, GELU feed-forward) and the pooling, and writes the (D) sentence vector.
/// Cosine similarity (the `Similarity` of the explainer) normalizes it as sentence-transformers'
/// Normalize module does.
public struct SentenceEncoder: Sendable {
    public let config: BertConfig
    public let tokenizer: WordPieceTokenizer
    public let pooling: SentencePooling
    /// Texts longer than this (in tokens, [CLS] and [SEP] included) are truncated.
    public private(set) var maxLength: Int
    /// Whether the model ends in an L2 normalization (sentence-transformers' Normalize module).
    public let normalizes: Bool
    public let graph: Graph
    let wordEmbeddings: [Float]
    let positionEmbeddings: [Float]
    let typeEmbedding: [Float]

    /// Loads a sentence-transformers folder: config.json, model.safetensors (Hugging Face names,
    /// with or without a "bert." prefix), the tokenizer, 1_Pooling/config.json (mean pooling when
    /// absent), sentence_bert_config.json's max_seq_length, modules.json's Normalize.
    public static func load(directory: String) throws -> SentenceEncoder {
        let dir = URL(fileURLWithPath: directory)
        func json(_ name: String) throws -> [String: Any]? {
            let path = dir.appendingPathComponent(name).path
            guard let data = FileManager.default.contents(atPath: path) else { return nil }
            guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw BiLRPError.io("\(path) is not a JSON object")
            }
            return obj
        }
        let configPath = dir.appendingPathComponent("config.json").path
        guard let configJSON = try json("config.json") else {
            throw BiLRPError.io("cannot read '\(configPath)': a text model folder needs config.json, model.safetensors and vocab.txt")
        }
        let config = try BertConfig(json: configJSON, path: configPath)
        let tokenizer = try WordPieceTokenizer.load(directory: directory)
        var pooling = SentencePooling.mean
        if let p = try json("1_Pooling/config.json") {
            let mean = p["pooling_mode_mean_tokens"] as? Bool ?? false, cls = p["pooling_mode_cls_token"] as? Bool ?? false
            let others = ["pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                          "pooling_mode_lasttoken"].filter { p[$0] as? Bool == true }
            guard others.isEmpty, mean != cls else {
                throw BiLRPError.unsupported(
                    "1_Pooling/config.json: pooling \(others.isEmpty ? "with mean and CLS both \(mean)" : others.joined(separator: ", ")); supported: mean or CLS alone")
            }
            pooling = mean ? .mean : .cls
        }
        var maxLength = config.maxPositions
        if let s = try json("sentence_bert_config.json"), let m = s["max_seq_length"] as? Int, m > 2 {
            maxLength = min(m, config.maxPositions)
        }
        var normalizes = false
        if let data = FileManager.default.contents(atPath: dir.appendingPathComponent("modules.json").path),
           let modules = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]] {
            normalizes = modules.contains { ($0["type"] as? String)?.hasSuffix(".Normalize") == true }
        }
        let weightsPath = dir.appendingPathComponent("model.safetensors").path
        let weights = try SafetensorsFile(path: weightsPath)
        return try SentenceEncoder(config: config, tokenizer: tokenizer, pooling: pooling, maxLength: maxLength,
                                   normalizes: normalizes, weights: weights, source: weightsPath)
    }

    public init(config: BertConfig, tokenizer: WordPieceTokenizer, pooling: SentencePooling, maxLength: Int,
                normalizes: Bool, weights: SafetensorsFile, source: String = "the weights") throws {
        let prefix = weights.entries["bert.embeddings.word_embeddings.weight"] != nil ? "bert." : ""
        let d = config.hiddenSize
        func tensor(_ name: String, _ shape: [Int]) throws -> [Float] {
            guard let t = try weights.tensor(named: prefix + name) else {
                throw BiLRPError.missingTensor(prefix + name)
            }
            guard t.shape == shape else {
                throw BiLRPError.shapeMismatch(what: "tensor '\(prefix + name)' in '\(source)'", expected: "\(shape)", found: "\(t.shape)")
            }
            return t.data
        }
        func linear(_ name: String, _ inputs: Int, _ outputs: Int) throws -> Graph.Op {
            .layer(.linear(try Linear(weight: try tensor(name + ".weight", [outputs, inputs]),
                                      bias: try tensor(name + ".bias", [outputs]), inFeatures: inputs, outFeatures: outputs)))
        }
        func layerNorm(_ name: String) throws -> Graph.Op {
            .layerNorm(try LayerNorm(gamma: try tensor(name + ".weight", [d]), beta: try tensor(name + ".bias", [d]),
                                     epsilon: config.layerNormEpsilon))
        }
        guard tokenizer.vocabulary.count == config.vocabularySize else {
            throw BiLRPError.shapeMismatch(what: "vocabulary (vocab.txt)", expected: "\(config.vocabularySize) tokens (config.json)",
                                           found: "\(tokenizer.vocabulary.count)")
        }
        wordEmbeddings = try tensor("embeddings.word_embeddings.weight", [config.vocabularySize, d])
        positionEmbeddings = try tensor("embeddings.position_embeddings.weight", [config.maxPositions, d])
        typeEmbedding = Array(try tensor("embeddings.token_type_embeddings.weight", [config.typeVocabularySize, d]).prefix(d))

        var nodes: [Graph.Node] = []
        func add(_ name: String, _ op: Graph.Op, _ inputs: [String]) -> String {
            nodes.append(Graph.Node(name: name, op: op, inputs: inputs, output: name))
            return name
        }
        var x = add("embeddings.LayerNorm", try layerNorm("embeddings.LayerNorm"), ["embeddings"])
        for i in 0..<config.layers {
            let p = "encoder.layer.\(i)"
            let q = add("\(p).attention.self.query", try linear("\(p).attention.self.query", d, d), [x])
            let k = add("\(p).attention.self.key", try linear("\(p).attention.self.key", d, d), [x])
            let v = add("\(p).attention.self.value", try linear("\(p).attention.self.value", d, d), [x])
            let a = add("\(p).attention.self", .attention(heads: config.heads), [q, k, v])
            let o = add("\(p).attention.output.dense", try linear("\(p).attention.output.dense", d, d), [a])
            let r1 = add("\(p).attention.output.add", .add, [o, x])
            let x1 = add("\(p).attention.output.LayerNorm", try layerNorm("\(p).attention.output.LayerNorm"), [r1])
            let f = add("\(p).intermediate.dense", try linear("\(p).intermediate.dense", d, config.intermediateSize), [x1])
            let g = add("\(p).intermediate.gelu", .gelu, [f])
            let f2 = add("\(p).output.dense", try linear("\(p).output.dense", config.intermediateSize, d), [g])
            let r2 = add("\(p).output.add", .add, [f2, x1])
            x = add("\(p).output.LayerNorm", try layerNorm("\(p).output.LayerNorm"), [r2])
        }
        switch pooling {
        case .mean: x = add("pooling.mean", .reduce(.width, mean: true), [x])
        case .cls: x = add("pooling.cls", .slice(Slice3(start: Position3(0, 0, 0), end: Position3(d, 1, 1))), [x])
        }
        self.graph = try Graph(input: "embeddings", nodes: nodes, output: x)
        self.config = config
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.maxLength = maxLength
        self.normalizes = normalizes
    }

    /// The same encoder (weights shared, not reloaded) truncating at another length, at most the
    /// model's positions.
    public func truncating(at length: Int) throws -> SentenceEncoder {
        guard (3...config.maxPositions).contains(length) else {
            throw BiLRPError.invalidArgument("maximum length \(length): the model takes 3 to \(config.maxPositions) tokens")
        }
        var e = self
        e.maxLength = length
        return e
    }

    /// The text as the model's tokens (truncated to `maxLength`). Empty text, or text with nothing
    /// but white space and control characters, is an error.
    public func tokenize(_ text: String) throws -> EncodedText {
        let e = tokenizer.encode(text, maxLength: maxLength)
        guard e.tokens.count > 2 else {
            throw BiLRPError.invalidArgument(text.isEmpty ? "the text is empty"
                : "the text has no tokens: it is only white space or control characters")
        }
        return e
    }

    /// The graph's input for a tokenized text: word + position + token-type (0) embeddings, (T, D).
    public func inputEmbeddings(_ e: EncodedText) throws -> Tensor {
        let d = config.hiddenSize, t = e.tokens.count
        guard t <= config.maxPositions else {
            throw BiLRPError.invalidArgument("\(t) tokens, more than the model's \(config.maxPositions) positions")
        }
        var x = [Float](repeating: 0, count: t * d)
        for (i, token) in e.tokens.enumerated() {
            for j in 0..<d {
                x[i * d + j] = wordEmbeddings[token.id * d + j] + positionEmbeddings[i * d + j] + typeEmbedding[j]
            }
        }
        return try Tensor(shape: [t, d], data: x)
    }
}
