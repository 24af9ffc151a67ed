/* SPDX-License-Identifier: Apache-2.0 */
/* safetensors.c - placeholder, being written. */
#include "model/model.h"
