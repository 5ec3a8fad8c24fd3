/* Input of bindgen for the `xen` feature (see build.rs). The domctl and sysctl headers
 * refuse to be included outside the hypervisor unless the caller says it is a tool. */
#define __XEN_TOOLS__ 1
#include <xenctrl.h>
