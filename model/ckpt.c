/* SPDX-License-Identifier: Apache-2.0 */
/* ckpt.c - placeholder, being written. */
#include "model/model.h"
