// Foundation/Foundation.h -- DECLARATIONS ONLY, for compiling cpp/metal/device.mm off Apple.
//
// Exactly the part of Foundation that device.mm uses, declared with the types of Apple's
// documented signatures (NSObject's reference counting, NSString's UTF-8 conversion, NSError's
// description, NSArray's count/objectAtIndex:, NSAutoreleasePool for @autoreleasepool). Two
// uses: `device.mm` is syntax-checked against it with misspelled selectors as errors
// (tests/metal_shim/check_device_mm.sh), and tests/metal_shim/shim.mm implements it on Linux.
// Anything device.mm starts calling must be added here first, or the check fails.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef long NSInteger;
typedef unsigned long NSUInteger;
#if defined(__APPLE__) && defined(__x86_64__)
typedef signed char BOOL;
#else
typedef bool BOOL;
#endif
#define YES ((BOOL)1)
#define NO ((BOOL)0)
#ifndef nil
#define nil ((id)0)
#endif

// The model of the SDK (macOS 15) these declarations follow; device.mm tests it before using
// APIs introduced there, so it still builds against older SDKs.
#ifndef __MAC_OS_X_VERSION_MAX_ALLOWED
#define __MAC_OS_X_VERSION_MAX_ALLOWED 150000
#endif

@class NSString;

@protocol NSObject
- (instancetype)retain;
- (oneway void)release;
- (instancetype)autorelease;
- (NSUInteger)retainCount;
@end

__attribute__((objc_root_class))
@interface NSObject <NSObject> {
    Class isa;
#ifdef LLMETAL_METAL_SHIM_IMPL
    NSUInteger shim_refs_;   // the Linux shim's reference count (not part of Apple's API)
#endif
}
+ (instancetype)alloc;
+ (instancetype)new;
- (instancetype)init;
- (void)dealloc;
@end

@interface NSString : NSObject
+ (instancetype)stringWithUTF8String:(const char*)nullTerminatedCString;
@property(readonly) const char* UTF8String;
@end

@interface NSError : NSObject
@property(readonly, copy) NSString* localizedDescription;
@end

@interface NSArray<__covariant ObjectType> : NSObject
@property(readonly) NSUInteger count;
- (ObjectType)objectAtIndex:(NSUInteger)index;
@end

// What clang's @autoreleasepool becomes under the runtimes without native pool calls.
@interface NSAutoreleasePool : NSObject
- (void)drain;
@end
