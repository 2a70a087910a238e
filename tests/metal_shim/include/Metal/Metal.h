// Metal/Metal.h -- DECLARATIONS ONLY, for compiling cpp/metal/device.mm off Apple.
//
// Exactly the part of the Metal API that device.mm uses, with the selectors, argument and
// result types, enumeration values and availability of Apple's documentation (macOS 15 SDK).
// tests/metal_shim/check_device_mm.sh syntax-checks device.mm against it (misspelled
// selectors are errors); tests/metal_shim/shim.mm implements it on Linux over the emulator.
#pragma once
#import <Foundation/Foundation.h>

#define LLMETAL_AVAILABLE_MACOS(v) __attribute__((availability(macos, introduced = v)))
#define LLMETAL_DEPRECATED_MACOS(v0, v1) __attribute__((availability(macos, introduced = v0, deprecated = v1)))

// ---- types and enumerations -------------------------------------------------------------------
typedef struct { NSUInteger width, height, depth; } MTLSize;
static inline MTLSize MTLSizeMake(NSUInteger width, NSUInteger height, NSUInteger depth) {
    MTLSize s = {width, height, depth};
    return s;
}

typedef NSUInteger MTLResourceOptions;            // NS_OPTIONS
enum : NSUInteger { MTLResourceStorageModeShared = 0UL << 4, MTLResourceStorageModePrivate = 2UL << 4 };

typedef NSUInteger MTLDispatchType;               // NS_ENUM
enum : NSUInteger { MTLDispatchTypeSerial = 0, MTLDispatchTypeConcurrent = 1 };

typedef NSUInteger MTLBarrierScope;               // NS_OPTIONS
enum : NSUInteger { MTLBarrierScopeBuffers = 1UL << 0 };

typedef NSUInteger MTLCommandBufferStatus;        // NS_ENUM
enum : NSUInteger {
    MTLCommandBufferStatusNotEnqueued = 0,
    MTLCommandBufferStatusEnqueued = 1,
    MTLCommandBufferStatusCommitted = 2,
    MTLCommandBufferStatusScheduled = 3,
    MTLCommandBufferStatusCompleted = 4,
    MTLCommandBufferStatusError = 5,
};

typedef NSInteger MTLGPUFamily;                   // NS_ENUM
enum : NSInteger { MTLGPUFamilyApple6 = 1006, MTLGPUFamilyApple7 = 1007, MTLGPUFamilyApple8 = 1008 };

typedef NSInteger MTLMathMode LLMETAL_AVAILABLE_MACOS(15.0);   // NS_ENUM
enum : NSInteger { MTLMathModeSafe = 0, MTLMathModeRelaxed = 1, MTLMathModeFast = 2 };

// ---- protocols --------------------------------------------------------------------------------
@protocol MTLResource <NSObject>
@end

@protocol MTLBuffer <MTLResource>
- (void*)contents;
@property(readonly) NSUInteger length;
@end

@protocol MTLFunction <NSObject>
@end

@protocol MTLLibrary <NSObject>
- (id<MTLFunction>)newFunctionWithName:(NSString*)functionName;
@end

@protocol MTLComputePipelineState <NSObject>
@property(readonly) NSUInteger maxTotalThreadsPerThreadgroup;
@property(readonly) NSUInteger threadExecutionWidth;
@end

@protocol MTLCommandEncoder <NSObject>
- (void)endEncoding;
- (void)pushDebugGroup:(NSString*)string;
- (void)popDebugGroup;
@end

@protocol MTLComputeCommandEncoder <MTLCommandEncoder>
- (void)setComputePipelineState:(id<MTLComputePipelineState>)state;
- (void)setBytes:(const void*)bytes length:(NSUInteger)length atIndex:(NSUInteger)index;
- (void)setBuffer:(id<MTLBuffer>)buffer offset:(NSUInteger)offset atIndex:(NSUInteger)index;
- (void)setThreadgroupMemoryLength:(NSUInteger)length atIndex:(NSUInteger)index;
- (void)dispatchThreadgroups:(MTLSize)threadgroupsPerGrid threadsPerThreadgroup:(MTLSize)threadsPerThreadgroup;
- (void)memoryBarrierWithScope:(MTLBarrierScope)scope;
@end

@protocol MTLCommandBuffer <NSObject>
- (id<MTLComputeCommandEncoder>)computeCommandEncoderWithDispatchType:(MTLDispatchType)dispatchType;
- (void)commit;
- (void)waitUntilCompleted;
@property(readonly) MTLCommandBufferStatus status;
@property(readonly) NSError* error;
@end

@protocol MTLCommandQueue <NSObject>
- (id<MTLCommandBuffer>)commandBuffer;
@end

@class MTLCompileOptions;

@protocol MTLDevice <NSObject>
@property(readonly) NSString* name;
@property(readonly) NSUInteger maxBufferLength;
@property(readonly) NSUInteger maxThreadgroupMemoryLength;
- (BOOL)supportsFamily:(MTLGPUFamily)gpuFamily;
- (id<MTLCommandQueue>)newCommandQueue;
- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options;
- (id<MTLBuffer>)newBufferWithBytesNoCopy:(void*)pointer
                                   length:(NSUInteger)length
                                  options:(MTLResourceOptions)options
                              deallocator:(void (^)(void* pointer, NSUInteger length))deallocator;
- (id<MTLLibrary>)newLibraryWithSource:(NSString*)source
                               options:(MTLCompileOptions*)options
                                 error:(NSError**)error;
- (id<MTLComputePipelineState>)newComputePipelineStateWithFunction:(id<MTLFunction>)computeFunction
                                                              error:(NSError**)error;
@end

// ---- classes and functions ---------------------------------------------------------------------
@interface MTLCompileOptions : NSObject
@property(readwrite) BOOL fastMathEnabled LLMETAL_DEPRECATED_MACOS(10.11, 15.0);
@property(readwrite) MTLMathMode mathMode LLMETAL_AVAILABLE_MACOS(15.0);
@end

#ifdef __cplusplus
extern "C" {
#endif
id<MTLDevice> MTLCreateSystemDefaultDevice(void);
NSArray<id<MTLDevice>>* MTLCopyAllDevices(void) LLMETAL_AVAILABLE_MACOS(10.11);
#ifdef __cplusplus
}
#endif
