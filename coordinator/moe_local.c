/* SPDX-License-Identifier: Apache-2.0 */
#include "coordinator/coordinator.h"
