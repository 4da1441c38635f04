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
        .executable(name: "bilrp", targets: ["bilrp"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
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

        // MARK: - Library
        .target(name: "BiLRP", dependencies: ["CKernels"]),
        .target(name: "BiLRPReference", dependencies: ["BiLRP"]),
        .target(
            name: "BiLRPIO",
            dependencies: ["BiLRP", "CImageIO", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["ONNX/README.md"]
        ),

        // MARK: - Ways in
        .executableTarget(
            name: "bilrp",
            dependencies: [
                "BiLRP", "BiLRPIO", "BiLRPReference",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "bilrp-bench",
            dependencies: ["BiLRP", "BiLRPIO", "CKernels"],
            path: "Benchmarks/bilrp-bench"
        ),

        // MARK: - Tests
        .testTarget(
            name: "BiLRPTests",
            dependencies: ["BiLRP", "BiLRPIO", "BiLRPReference", "CKernels"],
            resources: [.copy("Fixtures")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
