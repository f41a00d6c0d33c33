// Swagger UI over this server's /openapi.json: every request goes to this origin, and the key
// typed in Authorize is sent as "Authorization: Bearer <key>" by every "Try it out".
window.addEventListener("DOMContentLoaded", () => {
  window.ui = window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: true,
    displayRequestDuration: true,
    // No badge from the public validator service: nothing leaves for another origin.
    validatorUrl: null,
  });
});
