/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Compatibility shims for the out-of-tree ip_vs_mh backport.
 *
 * Supported range: Linux 4.11 (first kernel with hsiphash) to 6.x.
 * Everything used from IPVS (struct ip_vs_scheduler with the
 * (svc, skb, iph) ->schedule signature, ip_vs_iph_inverse(),
 * ip_vs_dest_hold()/ip_vs_dest_put(), ip_vs_scheduler_err()) exists
 * unchanged since 4.3, so the shims are about the build environment.
 * See README.md, "Kernel compatibility".
 */
#ifndef _IP_VS_MH_COMPAT_H
#define _IP_VS_MH_COMPAT_H

#include <linux/version.h>
#include <linux/kconfig.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(4, 11, 0)
#error "ip_vs_mh backport needs Linux >= 4.11 (hsiphash)"
#endif

#if !IS_ENABLED(CONFIG_IP_VS)
#error "this kernel is built without IPVS (CONFIG_IP_VS)"
#endif

/*
 * CONFIG_IP_VS_MH_TAB_INDEX exists since 4.18 and only when the in-tree
 * scheduler is configured; otherwise use the upstream Kconfig default.
 */
#ifdef CONFIG_IP_VS_MH_TAB_INDEX
#define MHB_DEFAULT_TAB_INDEX	CONFIG_IP_VS_MH_TAB_INDEX
#else
#define MHB_DEFAULT_TAB_INDEX	12
#endif

/*
 * struct_size() (4.18) and kvcalloc() (4.18) are deliberately not used;
 * the table is sized with plain arithmetic and kzalloc(), as upstream does.
 *
 * sysfs_emit() (5.10) is not used: parameter getters receive a PAGE_SIZE
 * buffer on all supported kernels, so scnprintf(PAGE_SIZE) is used.
 */

#endif /* _IP_VS_MH_COMPAT_H */
