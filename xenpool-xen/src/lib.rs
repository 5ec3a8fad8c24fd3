//! xenpool-xen
