/* SPDX-License-Identifier: Apache-2.0 */
/* tokenizer.c - placeholder, being written. */
#include "model/model.h"
