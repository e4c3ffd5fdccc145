/* SPDX-License-Identifier: MIT */
/*
 * pyipc_api.h - the whole public C API of the pyipc core.
 *
 * Every function returns 0 (or a non-negative count) on success and -errno on
 * failure.  The declarations live in one header per family so that the cffi
 * build script can read them as its cdef.
 */
#ifndef PYIPC_API_H
#define PYIPC_API_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ring_api.h"
#include "topic_api.h"
#include "channel_api.h"
#include "waitset_api.h"

#endif
