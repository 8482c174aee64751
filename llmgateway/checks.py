"""`check --deploy` for the admin's middleware, which lives in ADMIN_MIDDLEWARE.

Django's security checks look for SecurityMiddleware, CsrfViewMiddleware and
XFrameOptionsMiddleware in settings.MIDDLEWARE; here they wrap only the admin's
paths (llmgateway/api/middleware.py), so those checks (security.W001-W003) are
silenced in settings and this one asks the same of ADMIN_MIDDLEWARE. The checks
that Django skips when it misses SecurityMiddleware (HSTS, SSL redirect, ...)
run here as if it were in MIDDLEWARE, so none is lost.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags, Warning, register
from django.core.checks.security import base
from django.test.utils import override_settings

REQUIRED = {
    "django.middleware.security.SecurityMiddleware": "security.W001",
    "django.middleware.clickjacking.XFrameOptionsMiddleware": "security.W002",
    "django.middleware.csrf.CsrfViewMiddleware": "security.W003",
}
# Django's checks that run only when SecurityMiddleware is in MIDDLEWARE.
WITH_SECURITY_MIDDLEWARE = (
    base.check_sts,
    base.check_sts_include_subdomains,
    base.check_sts_preload,
    base.check_content_type_nosniff,
    base.check_ssl_redirect,
    base.check_referrer_policy,
    base.check_cross_origin_opener_policy,
)


@register(Tags.security, deploy=True)
def admin_middleware_security(app_configs, **kwargs) -> list:
    messages = [
        Warning(f"{path} is not in ADMIN_MIDDLEWARE (Django's {check}).", id="llmgateway.W001")
        for path, check in REQUIRED.items()
        if path not in settings.ADMIN_MIDDLEWARE
    ]
    with override_settings(MIDDLEWARE=[*settings.MIDDLEWARE, *settings.ADMIN_MIDDLEWARE]):
        for check in WITH_SECURITY_MIDDLEWARE:
            messages += check(app_configs)
    return messages
