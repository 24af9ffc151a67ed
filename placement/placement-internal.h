/* SPDX-License-Identifier: Apache-2.0 */
/*
 * placement-internal.h - what the files of placement/ share and nobody else sees.
 *
 *   routing.c   the placement object, routing table, lookups, replica choice, unload, quality
 *   solver.c    co_place_solve(): the expert placement solver
 *   load.c      sliding-window load accounting (co_load_*)
 *   loadfile.c  load-profile files (co_load_profile_*)
 */
#ifndef FERRY_PLACEMENT_INTERNAL_H
#define FERRY_PLACEMENT_INTERNAL_H

#include "common/common.h"
#include "placement/placement.h"

/* ---- the placement object (routing.c) ---------------------------------------------------- */

/* A placement of this shape with slots, slot_base and slot_worker filled in; slot_expert and
 * the routing table are left for the caller to fill. slots[n_workers] is copied; *ret is owned
 * by the caller (co_place_destroy()). Errors: -EINVAL with err naming the problem (a shape out
 * of range, fewer slots than experts), -ENOMEM. */
int co_place__alloc(int n_layers, int n_experts, int n_workers, const int *slots,
		    struct co_placement **ret, struct fr_error *err);

/* Rebuilds the routing table (rep_off, rep) of layer l from its slot_expert row. */
void co_place__build_routing(struct co_placement *p, int l);

#endif /* FERRY_PLACEMENT_INTERNAL_H */
