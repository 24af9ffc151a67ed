/* SPDX-License-Identifier: Apache-2.0 */
/* config.c - placeholder, being written. */
#include "model/model.h"
