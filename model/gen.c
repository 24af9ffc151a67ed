/* SPDX-License-Identifier: Apache-2.0 */
/* gen.c - placeholder, being written. */
#include "model/model.h"
