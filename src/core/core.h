// core: the vocabulary every Veil component shares. Read this first.
//
//  - Error / Result<T> / Status: errors cross component boundaries as values, never as exceptions.
//    An Error carries a code (which maps to the process exit code) and one line a user can act on:
//    "<what failed>: <where>: <why>". Messages never contain prompts, outputs, keys or tokens.
//  - Bytes / ByteView: owned and borrowed byte strings.
//  - Logging (log.h), hex (hex.h), files written atomically (file.h), CPU features (cpu.h),
//    default model resolution (model_path.h), build info (version.h).
//
// Thread-safety: everything here is safe to call from any thread.
#pragma once

#include "core/result.h"
#include "core/bytes.h"
#include "core/hex.h"
#include "core/file.h"
#include "core/log.h"
#include "core/cpu.h"
#include "core/model_path.h"
#include "core/version.h"
