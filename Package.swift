// swift-tools-version: 6.1
import PackageDescription

// No unsafeFlags anywhere, so other packages can depend on this one by version. The Makefile's
// build adds OpenMP from the command line (-Xcc -fopenmp -Xlinker -lomp5); a plain `swift build`
// runs the same kernels in parallel through libdispatch.
let package = Package(
    name: "BiLRP",
    platforms: [.macOS(.v14)],
    products: [
        // MARK: - Public API
        .library(name: "BiLRP", targets: ["BiLRP"]),
        .library(name: "BiLRPIO", targets: ["BiLRPIO"]),
        .library(name: "BiLRPReference", targets: ["BiLRPReference"]),
        .library(name: "BiLRPText", targets: ["BiLRPText"]),
        .library(name: "BiLRPServer", targets: ["BiLRPServer"]),
        .executable(name: "bilrp", targets: ["bilrp"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/vapor/multipart-kit", from: "4.7.1"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
    ],
    targets: [
        // MARK: - Arithmetic (C, OpenMP or libdispatch)
        .target(
            name: "CKernels",
            path: "CKernels",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("dispatch"), .linkedLibrary("m")]
        ),

        // libpng / libjpeg-turbo behind setjmp error handling (Debian: libpng-dev, libjpeg62-turbo-dev).
        .target(
            name: "CImageIO",
            path: "CImageIO",
            linkerSettings: [.linkedLibrary("png16"), .linkedLibrary("jpeg")]
        ),

        // FreeType for the pictures' text (Debian: libfreetype-dev; flags from pkg-config).
        .systemLibrary(
            name: "CFreeType",
            path: "Sources/CFreeType",
            pkgConfig: "freetype2",
            providers: [.apt(["libfreetype-dev"]), .brew(["freetype"])]
        ),

        // MARK: - Library
        .target(name: "BiLRP", dependencies: ["CKernels"]),
        .target(name: "BiLRPReference", dependencies: ["BiLRP"]),
        .target(
            name: "BiLRPIO",
            dependencies: ["BiLRP", "CImageIO", "CFreeType", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["ONNX/README.md"],
            resources: [.copy("Resources/viewer")]
        ),

        // Sentence-embedding models (BERT family): WordPiece tokenizer, encoder, token-pair explanations.
        .target(name: "BiLRPText", dependencies: ["BiLRP", "BiLRPIO"]),

        // MARK: - Ways in
        .target(
            name: "BiLRPServer",
            dependencies: [
                "BiLRP", "BiLRPIO", "BiLRPText",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "MultipartKit", package: "multipart-kit"),
            ],
            resources: [.copy("Resources/openapi.yaml")]
        ),
        .executableTarget(
            name: "bilrp",
            dependencies: [
                "BiLRP", "BiLRPIO", "BiLRPReference", "BiLRPServer", "BiLRPText",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "bilrp-bench",
            dependencies: ["BiLRP", "BiLRPIO", "BiLRPText", "CKernels", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Benchmarks/bilrp-bench"
        ),
        .executableTarget(
            name: "bilrp-server-bench",
            dependencies: [
                "BiLRP", "BiLRPIO",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Benchmarks/bilrp-server-bench"
        ),

        // MARK: - Tests
        .testTarget(
            name: "BiLRPTests",
            dependencies: ["BiLRP", "BiLRPIO", "BiLRPReference", "BiLRPText", "CKernels"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "BiLRPServerTests",
            dependencies: [
                "BiLRP", "BiLRPIO", "BiLRPServer", "BiLRPText",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
