/* SPDX-License-Identifier: MIT */
/* channel_api.h - message passing over pipes, UNIX sockets and POSIX queues. */
#ifndef PYIPC_CHANNEL_API_H
#define PYIPC_CHANNEL_API_H

#endif
